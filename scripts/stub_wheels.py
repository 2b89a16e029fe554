"""Build placeholder wheels for torchvision and torchaudio (CPU SFT environment only).

    python scripts/stub_wheels.py OUT_DIR

llamafactory 0.9.5 requires torchvision and torchaudio, but the registry's builds are
CUDA-linked and fail to import on a machine without an NVIDIA GPU. Text SFT needs neither:

- `torchaudio` (version 2.13.0+stub): an empty module, because llamafactory's `mm_plugin` does
  `import torchaudio` at import time; any audio call fails with a clear message.
- `torchvision` (version 0.28.0+stub): metadata only, no module, so pip's dependency check is
  satisfied while `import torchvision` still fails and transformers correctly reports it as absent.

Installing these wheels first keeps pip from ever fetching the CUDA builds. scripts/setup_env.sh
runs this; nobody needs to call it by hand.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

TORCHAUDIO_INIT = '''"""Placeholder torchaudio (BudgetThinker CPU SFT environment): no audio."""


def __getattr__(name):
    raise ImportError(
        f"torchaudio.{name} is unavailable: this environment has a placeholder torchaudio "
        "(the registry build is CUDA-linked); text SFT does not need it"
    )
'''

STUBS = {
    # name: (version, {path inside the wheel: text})
    "torchaudio": ("2.13.0+stub", {"torchaudio/__init__.py": TORCHAUDIO_INIT}),
    "torchvision": ("0.28.0+stub", {}),
}


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def build_wheel(name: str, version: str, files: dict[str, str], out: Path) -> Path:
    dist_info = f"{name}-{version}.dist-info"
    contents = {path: text.encode() for path, text in files.items()}
    contents[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        f"Summary: Placeholder {name} for CPU-only text SFT (BudgetThinker)\n"
    ).encode()
    contents[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: budgetthinker-stub\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    record = [_record_line(p, d) for p, d in contents.items()] + [f"{dist_info}/RECORD,,"]
    contents[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = out / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p, d in contents.items():
            zf.writestr(p, d)
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, (version, files) in STUBS.items():
        print(build_wheel(name, version, files, out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
