"""What every solve of a crawl shares (answers, calls in flight, the budget, the account's
concurrency, pauses): one interface (:mod:`.base`), kept in memory for one process or in
Redis for a fleet of processes (:mod:`.redis_state`), chosen by :mod:`.fleet`."""
