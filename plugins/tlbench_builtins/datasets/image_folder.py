"""Any image dataset laid out as ``<folder>/<domain>/<class>/<image>``: bring your own domains.

A folder that holds ``train/`` and ``test/`` (or ``val/``) folders of class folders is one
domain, named after the folder, with that official split; so is any domain folder laid out so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from tlbench import ClassFolderDataset, UserError, hookimpl, split_folders


class ImageFolder(ClassFolderDataset):
    """Domains are the subfolders of ``path``; classes are their subfolders, the same in each."""

    name = "image_folder"
    option_help: ClassVar[dict[str, str]] = {
        **ClassFolderDataset.option_help,
        "path": "folder holding <domain>/<class>/<image>, relative to the data root or absolute (required)",
    }

    def __init__(self, root: Path | None = None, **options: Any):
        super().__init__(root, **options)
        if not options.get("path"):
            raise UserError(
                "dataset 'image_folder' needs dataset option path: a folder holding "
                "<domain>/<class>/<image> files, relative to the data root or absolute"
            )
        path = Path(str(options["path"])).expanduser()
        if not path.is_absolute():
            if self.root is None:
                raise UserError(
                    f"dataset 'image_folder': path {path} is relative but no data root is set; "
                    f"give an absolute path or set the data root"
                )
            path = self.root / path
        self.folder = path

    def _check_usable(self) -> None:
        """A path the OS cannot even look up (a 5,000-character one: ENAMETOOLONG) is one line, not the
        traceback every ``exists()`` would raise."""
        try:
            self.folder.stat()
        except (FileNotFoundError, NotADirectoryError):
            return  # said below, with the expected layout
        except OSError as exc:
            text = str(self.folder)
            shown = text if len(text) <= 200 else f"{text[:100]}... ({len(text)} characters)"
            raise UserError(
                f"dataset 'image_folder': path {shown} cannot be used ({exc.strerror}); give the folder "
                "holding <domain>/<class>/<image>"
            ) from None

    def domains(self) -> list[str]:
        self._check_usable()
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(
                f"dataset 'image_folder': path {self.folder} is a file, not a folder; expected "
                f"{self.folder}/<domain>/<class>/<image>"
            )
        if not self.folder.is_dir():
            raise UserError(
                f"dataset 'image_folder': folder {self.folder} does not exist; expected "
                f"{self.folder}/<domain>/<class>/<image>"
            )
        if split_folders(self.folder) is not None:  # <folder>/{train,test}/<class>/<image>: one task
            return [self.folder.name]
        names = sorted(p.name for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not names:
            raise UserError(
                f"dataset 'image_folder': {self.folder} has no domain folders; expected "
                f"{self.folder}/<domain>/<class>/<image>"
            )
        return names

    def domain_folder(self, domain: str) -> Path:
        if split_folders(self.folder) is not None:
            return self.folder
        return self.folder / domain


@hookimpl
def register_datasets(register):
    register(ImageFolder)
