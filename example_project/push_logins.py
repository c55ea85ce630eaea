"""Push login jobs into the fleet example's scrapy-redis queue.

    python push_logins.py 30 [--redis-url redis://127.0.0.1:6379/0]

Then start ``scrapy crawl fleet_login`` as many times as you like: the processes share the
jobs and one captcha budget (see demo_crawler/spiders/fleet_login.py).
"""

from __future__ import annotations

import argparse
import json
import os

import redis

QUEUE = "fleet_login:logins"


def push_logins(redis_url: str, logins: int) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.rpush(QUEUE, *(json.dumps({"login": n}) for n in range(1, logins + 1)))
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logins", type=int, help="how many logins")
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    )
    args = parser.parse_args()
    push_logins(args.redis_url, args.logins)
    print(f"{args.logins} login jobs pushed into {QUEUE}")


if __name__ == "__main__":
    main()
