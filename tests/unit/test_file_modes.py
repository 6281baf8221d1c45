"""Files written through the atomic helpers get the mode a plain ``open()`` would give.

safetensors (and ``tempfile``) create files 0600; kept through the rename, a checkpoint
would be unreadable to an AUTOMATIC1111 or ComfyUI running as another user. Each case runs
in a fresh process with its umask set before anything is imported, as a user's shell would.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

_SCRIPT = """
import json, os, sys
from pathlib import Path

os.umask(int(sys.argv[1], 8))
source, out = Path(sys.argv[2]), Path(sys.argv[3])

import torch
from safetensors.torch import save_file

from vitdex.training.convert import convert, load_source
from vitdex.training.dreambooth.atomic import publish, write_json_atomic
from vitdex.training.registry.samples import write_sample

st = convert(source, out / "model.safetensors")
ck = convert(source, out / "other.ckpt", fmt="ckpt")
pipe = load_source(source, st.version)
sample = write_sample(
    pipe, out / "model.preview.png", prompt="a photo", steps=1, size=32, name="m",
    sha256=st.sha256,
)
tmp = out / ".tmp-final"
(tmp / "unet").mkdir(parents=True)
save_file({"w": torch.zeros(2)}, str(tmp / "unet" / "weights.safetensors"))
publish(tmp, out / "final")
write_json_atomic(out / "result.json", {"ok": True})
print(json.dumps([str(p) for p in (st.path, st.yaml_path, ck.path, ck.yaml_path, sample)]))
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("umask", "expected"), [("022", 0o644), ("027", 0o640)])
def test_written_files_follow_the_umask(
    tiny_sd_factory: Callable[[str], Path], tmp_path: Path, umask: str, expected: int
) -> None:
    source = tiny_sd_factory("sd21-base")  # SD 2.x: the YAML is written too
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, umask, str(source), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    written = [Path(p) for p in json.loads(done.stdout.strip().splitlines()[-1])]
    names = sorted(p.name for p in written)
    assert names == sorted(
        ["model.safetensors", "model.yaml", "other.ckpt", "other.yaml", "model.preview.png"]
    )
    modes = {p.name: oct(_mode(p)) for p in written}
    modes["final/unet/weights.safetensors"] = oct(
        _mode(out / "final" / "unet" / "weights.safetensors")
    )
    modes["result.json"] = oct(_mode(out / "result.json"))
    assert modes == dict.fromkeys(modes, oct(expected))


def test_replacing_a_file_keeps_its_mode(tmp_path: Path) -> None:
    from vitdex.training.dreambooth.atomic import write_json_atomic

    target = tmp_path / "result.json"
    write_json_atomic(target, {"n": 1})
    target.chmod(0o600)  # the user chose to keep it private
    write_json_atomic(target, {"n": 2})
    assert json.loads(target.read_text()) == {"n": 2}
    assert _mode(target) == 0o600
