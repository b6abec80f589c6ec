"""The two test lanes, enforced: a test that starts TorchServe or trains must carry the
`torchserve` or `training` marker, or `make test-fast` (-m "not torchserve and not training")
would run it. Markers are declared by hand; this guard fails, at the moment it happens, any
test that does the slow thing without its marker, so a new test cannot slip into the fast lane.

What counts is what the test does, seen at run time (during its setup, including the session
and module fixtures it is the first to use, and its call):
- a subprocess whose command runs `torchserve` or devtools' serve/demo/local server (lane `torchserve`);
- a subprocess running `python -m train` or `torchrun` (lane `training`);
- an optimizer step in the test process (lane `training`: train.pipeline, train.trainer.fit).
Only the command a test starts is seen, not what a script it runs starts in turn. A `torchserve`
test may train the export it serves. tests/conftest.py installs the guard.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence, Union

import pytest

# Which marker each lane accepts: building the export a TorchServe test serves is training too.
ALLOWED = {"torchserve": ("torchserve",), "training": ("training", "torchserve")}
# The project's entry points that start TorchServe or train, whatever launches them.
TORCHSERVE_ENTRIES = ("devtools.serve", "devtools.demo", "devtools.local_server")
TRAINING_ENTRIES = ("train", "train.__main__", "torch.distributed.run")


def command_lane(args: Union[str, bytes, Sequence, None]) -> Optional[str]:
    """The lane a subprocess command belongs to, or None for a fast one."""
    if args is None:
        return None
    if isinstance(args, (str, bytes, os.PathLike)):
        text = os.fsdecode(args)
        try:
            words = shlex.split(text)
        except ValueError:  # unbalanced quotes: a plain split is close enough to classify
            words = text.split()
    else:
        words = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in args]
    names = [os.path.basename(w) for w in words]
    # Python entry points, run as `-m module` or as a script path (devtools/serve.py -> devtools.serve).
    entries = {b for a, b in zip(words, words[1:]) if a == "-m"}
    entries |= {w[:-3].replace(os.sep, ".") for w in words if w.endswith(".py")}

    def runs(modules) -> bool:
        return any(e == m or e.endswith("." + m) for e in entries for m in modules)

    if "torchserve" in names or runs(TORCHSERVE_ENTRIES):
        return "torchserve"
    if "torchrun" in names or runs(TRAINING_ENTRIES):
        return "training"
    return None


class LaneGuard:
    """Knows the test being set up or run and fails it when it does a lane's work unmarked."""

    def __init__(self) -> None:
        self.item: Optional[pytest.Item] = None
        self._torch_hooked = False
        self._popen_init = subprocess.Popen.__init__

    def install(self) -> None:
        guard, original = self, self._popen_init

        def checked_init(popen, *args, **kwargs):
            command = kwargs.get("args", args[0] if args else None)
            lane = command_lane(command)
            if lane:
                guard.check(lane, f"runs {command!r}")
            original(popen, *args, **kwargs)

        subprocess.Popen.__init__ = checked_init

    def uninstall(self) -> None:
        subprocess.Popen.__init__ = self._popen_init

    @contextmanager
    def watching(self, item: pytest.Item) -> Iterator[None]:
        """Around a test's setup or call (not teardown: a session fixture stopping TorchServe
        is torn down after whichever test ran last)."""
        # Hooked once torch is imported, by collection at the latest: SDK-only runs never load it.
        if not self._torch_hooked and "torch" in sys.modules:
            from torch.optim.optimizer import register_optimizer_step_pre_hook
            register_optimizer_step_pre_hook(lambda opt, args, kwargs: self.check("training", "steps an optimizer"))
            self._torch_hooked = True
        self.item = item
        try:
            yield
        finally:
            self.item = None

    def check(self, lane: str, what: str) -> None:
        item = self.item
        if item is None or any(item.get_closest_marker(m) for m in ALLOWED[lane]):
            return
        pytest.fail(f"{item.nodeid} {what}, which is {lane} work, but is not marked: add "
                    f"`pytestmark = pytest.mark.{lane}` to its module (or @pytest.mark.{lane} to the "
                    f"test) so that `make test-fast` leaves it out", pytrace=False)
