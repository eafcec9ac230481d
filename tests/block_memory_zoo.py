"""Imported first by the remote-code probes: makes `memory_zoo` unimportable, as on a machine without it."""

import sys


class BlockMemoryZoo:
    """Import hook that refuses `memory_zoo` and its submodules."""

    def find_spec(self, name, path=None, target=None):
        if name == "memory_zoo" or name.startswith("memory_zoo."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)")
        return None


sys.meta_path.insert(0, BlockMemoryZoo())
