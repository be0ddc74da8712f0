"""SIGKILL of a process in the middle of block writes never leaves a block that reads wrong.

The blocks are aligned ones: slots of one package file, written data first, header last.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from pixxelfs.remote.block_cache import BlockKey
from pixxelfs.remote.block_store import BlockStore, block_name, stored_blocks, usage

BLOCK = 256 * 1024
BLOCKS = 64
WRITER = """
import sys
from pathlib import Path
from pixxelfs.remote.block_cache import BlockKey
from pixxelfs.remote.block_store import BlockStore, block_name
store = BlockStore(Path(sys.argv[1]), 24 * {block})
store.open()
print("ready", flush=True)
while True:
    for index in range({blocks}):
        name, text = block_name(BlockKey(("c", '"e"', 1 << 30), index), {block})
        if store.get(name, text) is None:
            store.put(name, text, bytes([index]) * {block})
"""


def test_killed_writers_leave_only_complete_blocks(tmp_path: Path) -> None:
    rng = random.Random(3)
    script = WRITER.format(block=BLOCK, blocks=BLOCKS)
    for _round in range(12):
        writer = subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.15))  # a varied point inside the write loop
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    store = BlockStore(tmp_path, 24 * BLOCK)
    store.open()  # removes the temporary files of the dead writers
    assert not list(tmp_path.glob("*/.*.tmp"))
    found = 0
    for index in range(BLOCKS):
        named = block_name(BlockKey(("c", '"e"', 1 << 30), index), BLOCK)
        assert named is not None
        data = store.get(*named)
        if data is not None:
            assert data == bytes([index]) * BLOCK
            found += 1
    assert found > 0
    assert store.corrupt == 0
    assert all(ok for _key, ok in stored_blocks(tmp_path))
    assert store.held() == usage(tmp_path).bytes
    store.close()
