"""Run a script as if some installed packages were not: ``python _without.py hats,lsdb SCRIPT ARGS...``.

Python's path finder is wrapped so that it does not find the named top-level modules (nor their submodules): for
the process, they are not installed (``importlib.util.find_spec`` returns None, ``import`` raises
ModuleNotFoundError), while every other package loads as usual."""

import runpy
import sys
from importlib.machinery import PathFinder


class _Hiding:
    def __init__(self, finder, hidden):
        self.finder, self.hidden = finder, hidden

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.hidden:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)


hidden = set(sys.argv[1].split(","))
assert not hidden & set(sys.modules), "already imported"
sys.meta_path[:] = [_Hiding(f, hidden) if f is PathFinder else f for f in sys.meta_path]
sys.argv = sys.argv[2:]
sys.path[0] = str(__import__("pathlib").Path(sys.argv[0]).resolve().parent)
runpy.run_path(sys.argv[0], run_name="__main__")
