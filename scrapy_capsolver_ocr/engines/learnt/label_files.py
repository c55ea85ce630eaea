"""Labelled captchas in a folder, for ``learn train`` and ``learn eval``: every image file
named ``<answer>_<anything>.<ext>`` (``7FKP2_0001.png``), the answer before the first
underscore."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import CaptchaImageError
from ...images import DEFAULT_MAX_IMAGE_PIXELS, check_image

#: Files with these extensions are the folder's images; other files are left alone.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"})
#: The largest image file taken, as the crawl's default CAPSOLVER_MAX_IMAGE_SIZE would.
MAX_IMAGE_BYTES = 1_000_000
#: File names shown in an error, at most.
_SHOWN = 5


class LabelFolderError(ValueError):
    """A folder of labelled images that cannot be used as asked."""


@dataclass(frozen=True)
class ImageFile:
    """An image file of the folder: its path, its answer (None when its name has none),
    its bytes, and why it is no usable image (None when it is one)."""

    path: Path
    answer: str | None
    image: bytes
    problem: str | None


def answer_of(path: Path) -> str | None:
    """The answer a file's name gives (``7FKP2`` of ``7FKP2_0001.png``), or None."""
    answer, underscore, _ = path.stem.partition("_")
    return answer if underscore and answer and answer == answer.strip() else None


def image_files(directory: Path) -> list[ImageFile]:
    """Every image file of ``directory`` (not recursive, by extension), in name order, with
    the checks the crawl makes of a captcha (a complete image of a known type, within the
    default size and pixel limits). Raises :class:`LabelFolderError` when ``directory`` is
    no folder or holds no image file; OSError when a file cannot be read."""
    if not directory.is_dir():
        raise LabelFolderError(f"{directory} is not a folder")
    found = []
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        image = path.read_bytes()
        problem = None
        try:
            check_image(image, MAX_IMAGE_BYTES, path.name, DEFAULT_MAX_IMAGE_PIXELS)
        except CaptchaImageError as exc:
            problem = str(exc)
        found.append(ImageFile(path, answer_of(path), image, problem))
    if not found:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise LabelFolderError(f"{directory} holds no image file ({suffixes})")
    return found


def _listed(files: list[ImageFile]) -> str:
    names = ", ".join(file.path.name for file in files[:_SHOWN])
    return names + (f" and {len(files) - _SHOWN} more" if len(files) > _SHOWN else "")


def labelled_files(directory: Path) -> list[ImageFile]:
    """The image files of ``directory``, each named with its answer and a usable image.
    Raises :class:`LabelFolderError` naming the files that are not."""
    files = image_files(directory)
    unnamed = [file for file in files if file.answer is None]
    if unnamed:
        raise LabelFolderError(
            f"{len(unnamed)} image(s) in {directory} have no answer in their name "
            f"(expected <answer>_<anything>.<ext>, e.g. 7FKP2_0001.png): {_listed(unnamed)}"
        )
    bad = [file for file in files if file.problem is not None]
    if bad:
        raise LabelFolderError(
            f"{len(bad)} image(s) in {directory} cannot be used: {bad[0].problem}"
            + (f" (also {_listed(bad[1:])})" if len(bad) > 1 else "")
        )
    return files
