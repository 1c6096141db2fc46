"""Portable saves: a saved folder that also loads where hf_ddm is NOT installed.

``pipe.save_pretrained(dir, portable=True)`` does the normal save, then uses diffusers' custom-component
mechanism: every component whose class comes from hf_ddm gets, in its own subfolder, a flat bundle of
the hf_ddm modules it needs, and model_index.json names that bundle (``"unet": ["hf_ddm_unet", "UNet"]``,
``"scheduler": ["hf_ddm_vp", "VPScheduler"]``). The pipeline file at the root gets the same treatment
(``pipeline_utils``, ``guidance``, ``processes``, ... next to it), so that
``DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)`` needs diffusers (and transformers,
for a text encoder) but not hf_ddm.

How the bundle is built (and why it looks the way it does):

- The modules come from the real import graph: each file is parsed with ``ast`` and only hf_ddm-internal
  ``from ... import ...`` statements are followed (at any depth, function-level imports included).
  ``import hf_ddm.x``, ``from hf_ddm import <submodule>`` and star imports are refused with a clear error
  rather than bundled wrongly.
- Those statements are rewritten to same-folder relative imports, ``from .hf_ddm_processes import X``:
  the one form diffusers' ``get_cached_module_file`` recognises (a regex for ``from .name import``).
- Bundled files are named ``hf_ddm_<stem>`` (the full dotted path, ``hf_ddm_models_layers``, where two
  modules of the package share a stem). The names are a function of the installed package alone, not of
  one save: diffusers copies every local custom-code file of every folder into one flat package
  (``diffusers_modules.local``), so one name must always mean one module, and the prefix keeps hf_ddm's
  ``layers``/``base``/``text`` apart from other projects' custom code.
- For a local folder diffusers copies only the files an entry module imports *directly*, so each bundled
  file ends with a never-executed ``if False:`` block that imports every bundled module of its closure
  that it does not import directly.
- model_index.json keeps the installed module of each rewritten entry under ``_hf_ddm_modules``
  (diffusers ignores keys starting with "_"): ``LatentDiffusionPipeline.from_pretrained(dir)`` maps the
  entries back and keeps loading the installed classes (see ``HfDdmPipeline.load_config``).

Limits: the bundled code is a snapshot of the hf_ddm that saved the folder; fixes in a later hf_ddm reach
it only through the installed classes (or a new portable save). Components from diffusers or
transformers (a diffusers scheduler, ``AutoencoderKL``, a CLIP text encoder and tokenizer) are left as
they are and must be installed where the folder is loaded. Portable saving needs the installed hf_ddm:
a pipeline loaded from bundled code cannot be saved portable again (load it with the installed class
first). Loading bundled code always needs ``trust_remote_code=True``.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os
import pkgutil
import sys
from typing import Dict, List, Optional, Tuple

PACKAGE = "hf_ddm"
PREFIX = "hf_ddm_"
INDEX_KEY = "_hf_ddm_modules"  # model_index.json: component -> installed module of its bundled entry


class PortableSaveError(ValueError):
    """The pipeline or a module it needs cannot be bundled."""


# --- the package's modules and their flat names ---------------------------------------------------

def _is_internal(name: Optional[str]) -> bool:
    return bool(name) and (name == PACKAGE or name.startswith(PACKAGE + "."))


def _package_modules() -> Dict[str, bool]:
    """Every module of the installed package, ``{dotted name: is_package}``, found without importing
    any subpackage (hf_ddm.pipelines may live in another folder: use the import system's view)."""
    found = {}

    def walk(name):
        spec = importlib.util.find_spec(name)
        if spec is None:
            return
        paths = spec.submodule_search_locations
        found[name] = paths is not None
        if paths is not None:
            for info in pkgutil.iter_modules(list(paths)):
                walk(f"{name}.{info.name}")

    walk(PACKAGE)
    return found


def flat_names(modules: Optional[Dict[str, bool]] = None) -> Dict[str, str]:
    """``{module: bundled file stem}``: ``hf_ddm_<last part>``, or ``hf_ddm_<all parts>`` for the
    modules whose last part another module of the package shares."""
    modules = _package_modules() if modules is None else modules
    stems: Dict[str, List[str]] = {}
    for name in modules:
        stems.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    out = {}
    for stem, names in stems.items():
        for name in names:
            if name == PACKAGE:
                out[name] = PREFIX + "init"
            elif len(names) == 1:
                out[name] = PREFIX + stem
            else:
                out[name] = PREFIX + "_".join(name.split(".")[1:])
    if len(set(out.values())) != len(out):  # e.g. hf_ddm/a_b.py beside hf_ddm/a/b.py
        raise PortableSaveError(f"hf_ddm modules map to clashing bundle names: {sorted(out.items())}")
    return out


def _source_file(module: str) -> str:
    mod = sys.modules.get(module)
    path = getattr(mod, "__file__", None) if mod is not None else None
    if path is None:
        spec = importlib.util.find_spec(module)
        path = spec.origin if spec is not None else None
    if not path or not path.endswith(".py") or not os.path.isfile(path):
        raise PortableSaveError(f"no Python source for {module!r} (found {path!r})")
    return path


# --- rewriting one file ---------------------------------------------------------------------------

def _rewrite(source: str, filename: str, module: Optional[str], is_package: bool, names: Dict[str, str],
             modules: Dict[str, bool]) -> Tuple[str, List[str]]:
    """``source`` with every hf_ddm-internal ``from ... import`` made a same-folder relative import of the
    bundled name; returns (new source, internal modules it imports). ``module`` is the file's dotted
    name (None for a file outside any package: then only absolute hf_ddm imports are allowed)."""
    tree = ast.parse(source, filename)
    package = (module if is_package else module.rpartition(".")[0]) if module else None
    edits, deps = [], []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            bad = [a.name for a in node.names if _is_internal(a.name)]
            if bad:
                raise PortableSaveError(f"{where}: `import {bad[0]}` cannot be bundled; use `from ... import ...`")
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            if not package:
                raise PortableSaveError(f"{where}: relative import in a file outside any package")
            target = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
        else:
            target = node.module
        if not _is_internal(target):
            continue
        if target not in names:
            raise PortableSaveError(f"{where}: {target!r} is not a module of the installed hf_ddm")
        for alias in node.names:
            if alias.name == "*" or f"{target}.{alias.name}" in modules:
                raise PortableSaveError(
                    f"{where}: `from {target} import {alias.name}` imports a module (or *); "
                    "import names from the module itself"
                )
        deps.append(target)
        new = ast.ImportFrom(module=names[target], names=node.names, level=1)
        edits.append((node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, ast.unparse(new)))

    # Splice in bytes (ast offsets are UTF-8 byte offsets), last edit first.
    lines = source.encode("utf-8").splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    data = source.encode("utf-8")
    for l0, c0, l1, c1, text in sorted(edits, reverse=True):
        data = data[: starts[l0 - 1] + c0] + text.encode("utf-8") + data[starts[l1 - 1] + c1:]
    return data.decode("utf-8"), sorted(set(deps))


class _Bundler:
    """Rewritten sources and direct dependencies of the installed modules, computed once per save."""

    def __init__(self):
        self.modules = _package_modules()
        self.names = flat_names(self.modules)
        self._cache: Dict[str, Tuple[str, List[str]]] = {}

    def module(self, name: str) -> Tuple[str, List[str]]:
        if name not in self._cache:
            path = _source_file(name)
            with open(path, encoding="utf-8") as f:
                source = f.read()
            self._cache[name] = _rewrite(source, path, name, self.modules.get(name, False), self.names, self.modules)
        return self._cache[name]

    def closure(self, deps: List[str], exclude: Optional[str] = None) -> List[str]:
        seen, todo = set(), list(deps)
        while todo:
            name = todo.pop()
            if name in seen or name == exclude:
                continue
            seen.add(name)
            todo.extend(self.module(name)[1])
        return sorted(seen)

    def finish(self, source: str, deps: List[str], exclude: Optional[str] = None) -> str:
        """``source`` plus the import-only block naming the closure's modules it does not import directly."""
        missing = [m for m in self.closure(deps, exclude) if m not in deps]
        if not missing:
            return source
        block = [
            "",
            "",
            "# hf_ddm portable bundle: for a local folder diffusers copies only the modules a custom-code file",
            "# imports directly, so this file names every bundled module it needs. Never executed.",
            "if False:  # pragma: no cover",
        ]
        block += [f"    from .{self.names[m]} import __name__ as _bundled_{self.names[m]}  # noqa: F401"
                  for m in missing]
        return source.rstrip("\n") + "\n".join(block) + "\n"

    def write(self, folder: str, entry_file: str, entry_source: str, entry_deps: List[str],
              exclude: Optional[str] = None) -> List[str]:
        """Write the entry file and its bundle into ``folder``; returns the file names written."""
        modules = self.closure(entry_deps, exclude)
        files = {entry_file: self.finish(entry_source, entry_deps, exclude)}
        for m in modules:
            source, deps = self.module(m)
            name = self.names[m] + ".py"
            if name in files:
                raise PortableSaveError(f"bundle file name {name!r} used twice in {folder}")
            files[name] = self.finish(source, deps, m)
        for name, text in files.items():
            with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                f.write(text)
        _check_folder(folder, files)
        return sorted(files)


def _check_folder(folder: str, files: Dict[str, str]):
    """What diffusers will look for, exactly as it looks: every relative import its regex finds in a
    bundled file must be a file of the folder, and no bundled file may import hf_ddm."""
    from diffusers.utils.dynamic_modules_utils import get_relative_imports

    for name, text in files.items():
        for rel in get_relative_imports(os.path.join(folder, name)):
            if not os.path.isfile(os.path.join(folder, rel + ".py")):
                raise PortableSaveError(f"{folder}/{name} imports .{rel}, which is not in the bundle")
        for node in ast.walk(ast.parse(text)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(_is_internal(m) for m in mods):
                raise PortableSaveError(f"{folder}/{name} still imports hf_ddm")


# --- the save -------------------------------------------------------------------------------------

def pipeline_module(index: dict) -> str:
    """The installed module of a folder's hf_ddm pipeline class: ``_class_name`` is ``[file stem, Class]``
    and every hf_ddm pipeline file is ``hf_ddm.pipelines.<stem>``."""
    entry = index.get("_class_name")
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
        raise PortableSaveError(f"model_index.json: _class_name {entry!r} does not name an hf_ddm pipeline file")
    module = f"{PACKAGE}.pipelines.{entry[0]}"
    try:
        found = getattr(importlib.import_module(module), entry[1], None)
    except ImportError:
        found = None
    if found is None:
        raise PortableSaveError(f"model_index.json: _class_name {entry!r} is not a pipeline of the installed hf_ddm")
    return module


def make_portable(save_directory: str, module: Optional[str] = None, source_path: Optional[str] = None) -> Dict[str, str]:
    """Turn a saved folder into a portable one (see the module docstring): every hf_ddm component's subfolder
    gets its bundle, the root the pipeline file and its bundle, model_index.json names them. ``module`` /
    ``source_path``: the pipeline class's module and file (default: from ``_class_name``, an hf_ddm pipeline).
    A folder that is portable already is bundled afresh from the installed package. Returns ``{component:
    installed module}`` as recorded in model_index.json."""
    index_path = os.path.join(save_directory, "model_index.json")
    with open(index_path) as f:
        index = json.load(f)
    bundler = _Bundler()
    installed = dict(index.pop(INDEX_KEY, None) or {})
    module = module or pipeline_module(index)

    bundled_from = [
        f"{k} ({v[0]})" for k, v in index.items()
        if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0].startswith("diffusers_modules.")
    ]
    if bundled_from or module.startswith("diffusers_modules."):
        raise PortableSaveError(
            "this pipeline runs bundled (custom) code, not the installed hf_ddm "
            f"{bundled_from or [module]}: load the folder with the installed class "
            "(e.g. LatentDiffusionPipeline.from_pretrained) and save that portable"
        )

    recorded = {}
    for component, entry in sorted(index.items()):
        if component.startswith("_") or not isinstance(entry, list) or len(entry) != 2:
            continue
        library, class_name = entry
        library = installed.get(component, library)  # a portable folder's bundle -> its installed module
        if not isinstance(library, str) or not library.startswith(PACKAGE + "."):
            continue  # diffusers, transformers, or an optional component left out (None)
        folder = os.path.join(save_directory, component)
        if not os.path.isdir(folder):
            raise PortableSaveError(f"component {component!r} ({library}) has no subfolder in {save_directory}")
        if library not in bundler.names:
            raise PortableSaveError(f"component {component!r}: {library!r} is not a module of the installed hf_ddm")
        for old in os.listdir(folder):  # an earlier bundle
            if old.startswith(PREFIX) and old.endswith(".py"):
                os.remove(os.path.join(folder, old))
        source, deps = bundler.module(library)
        bundler.write(folder, bundler.names[library] + ".py", source, deps, exclude=library)
        index[component] = [bundler.names[library], class_name]
        recorded[component] = library

    source_path = source_path or _source_file(module)
    entry_file = os.path.splitext(os.path.basename(source_path))[0] + ".py"
    if entry_file[:-3] in bundler.names.values():
        raise PortableSaveError(f"the pipeline file {entry_file!r} clashes with a bundled hf_ddm module")
    for old in os.listdir(save_directory):
        if old.startswith(PREFIX) and old.endswith(".py"):
            os.remove(os.path.join(save_directory, old))
    with open(source_path, encoding="utf-8") as f:
        source = f.read()
    in_package = module if "." in module else None  # a script's __main__ has no package
    source, deps = _rewrite(source, source_path, in_package, False, bundler.names, bundler.modules)
    bundler.write(save_directory, entry_file, source, deps, exclude=module)

    index[INDEX_KEY] = recorded
    with open(index_path, "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write("\n")
    return recorded


def export(folder: str, dest: str) -> str:
    """A portable copy of the saved pipeline ``folder`` at ``dest`` (replaced): its files as they are --
    weights byte for byte, configs, cards -- with the code bundled from the installed hf_ddm. What a folder
    of this repository becomes when it is published."""
    import shutil

    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise PortableSaveError(f"{folder!r} is not a saved pipeline folder (no model_index.json)")
    if os.path.abspath(dest) == os.path.abspath(folder):
        raise PortableSaveError("dest must be another folder than the one exported")
    if os.path.exists(dest):
        shutil.rmtree(dest)
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("*.py", "__pycache__", "*.pyc"))
    make_portable(dest)
    return dest


def main(argv=None) -> int:
    """``python -m hf_ddm.portable FOLDER DEST [--repo-id USER/NAME]``: write (and upload) a portable copy."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m hf_ddm.portable", description=export.__doc__)
    p.add_argument("folder", help="a saved hf_ddm pipeline folder, e.g. space/models/ldm_class")
    p.add_argument("dest", help="where the portable copy goes (replaced)")
    p.add_argument("--repo-id", help="also upload the copy to this Hub model repository (created if missing)")
    p.add_argument("--private", action="store_true", help="create the Hub repository private")
    args = p.parse_args(argv)
    export(args.folder, args.dest)
    print(f"portable copy: {args.dest} (DiffusionPipeline.from_pretrained(..., trust_remote_code=True))")
    if args.repo_id:
        import huggingface_hub

        repo = huggingface_hub.create_repo(args.repo_id, exist_ok=True, private=args.private).repo_id
        huggingface_hub.upload_folder(repo_id=repo, folder_path=args.dest, commit_message="Upload hf_ddm pipeline")
        print(f"uploaded: https://huggingface.co/{repo}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["make_portable", "export", "pipeline_module", "flat_names", "PortableSaveError", "INDEX_KEY"]
