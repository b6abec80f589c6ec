"""The lane guard (tests/lane_guard.py): which commands are slow lanes' work, and that the
installed guard fails an unmarked test at the moment it starts TorchServe or trains."""
import subprocess
import sys

import pytest
import torch
from lane_guard import command_lane


@pytest.mark.parametrize("command, lane", [
    (["/venv/bin/torchserve", "--start", "--ncs"], "torchserve"),
    ("export TS_CONFIG_FILE=$PWD/config.properties && torchserve --start --models seqrec.mar", "torchserve"),
    ([sys.executable, "-m", "train", "--data", "synthetic"], "training"),
    ([sys.executable, "-m", "train.__main__"], "training"),
    (["/venv/bin/torchrun", "--standalone", "-m", "train"], "training"),
    ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"], "training"),
    ([sys.executable, "-m", "devtools.serve", "artifacts/demo"], "torchserve"),
    ([sys.executable, "/repo/devtools/demo.py", "artifacts/demo"], "torchserve"),
    ([sys.executable, "/repo/train/__main__.py", "--out", "x"], "training"),
    ([sys.executable, "-m", "train.catalog", "--export", "x"], None),  # a catalogue rebuild trains nothing
    ([sys.executable, "-c", "import seqrec_sdk"], None),
    (["torch-model-archiver", "--model-name", "seqrec"], None),
    ([sys.executable, "ops/rollout.py", "--management", "http://127.0.0.1:8081"], None),
    ([sys.executable, "/repo/bench/train_speed.py"], None),  # a file named train_*.py is not train
    (b"git rev-parse HEAD", None),
])
def test_commands_are_put_in_their_lane(command, lane):
    assert command_lane(command) == lane


def test_unmarked_test_that_starts_torchserve_fails_before_it_starts():
    # A path that does not exist: were the guard missing, Popen would raise FileNotFoundError.
    with pytest.raises(pytest.fail.Exception, match="is not marked: add `pytestmark = pytest.mark.torchserve`"):
        subprocess.Popen(["/nonexistent/torchserve", "--start"])


def test_unmarked_test_that_steps_an_optimizer_fails():
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.5)
    p.sum().backward()
    with pytest.raises(pytest.fail.Exception, match="steps an optimizer, which is training work"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(2))  # failed before the step
