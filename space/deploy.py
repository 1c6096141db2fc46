#!/usr/bin/env python
"""Assemble the Space folder (and optionally upload it).

    python space/deploy.py --out build/space                     # assemble only
    python space/deploy.py --out build/space --repo-id you/hf-ddm-demo   # and push (needs `hf auth login`)

A Space repository holds only this folder, and hf_ddm is not on PyPI, so the library is vendored next to
app.py: ``hf_ddm/`` from the repository root and ``pipelines/`` as ``hf_ddm/pipelines`` (the same
package layout ``pip install`` produces). ``requirements.txt`` lists the library's runtime dependencies.
"""

import argparse
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SPACE_FILES = ("app.py", "README.md", "requirements.txt", "screenshot.png", "hf_ddm_space", "models")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".DS_Store")


def assemble(out: str) -> str:
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    for name in SPACE_FILES:
        src = os.path.join(HERE, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(out, name), ignore=IGNORE)
        elif os.path.exists(src):
            shutil.copy2(src, os.path.join(out, name))
    shutil.copytree(os.path.join(ROOT, "hf_ddm"), os.path.join(out, "hf_ddm"), ignore=IGNORE)
    shutil.copytree(os.path.join(ROOT, "pipelines"), os.path.join(out, "hf_ddm", "pipelines"), ignore=IGNORE)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "build", "space"))
    p.add_argument("--repo-id", default=None, help="Space to create/update, e.g. you/hf-ddm-demo")
    p.add_argument("--private", action="store_true")
    args = p.parse_args(argv)
    out = assemble(args.out)
    print(f"assembled {out}")
    if args.repo_id:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(args.repo_id, repo_type="space", space_sdk="gradio", private=args.private, exist_ok=True)
        api.upload_folder(folder_path=out, repo_id=args.repo_id, repo_type="space",
                          commit_message="Deploy hf_ddm demo Space")
        print(f"pushed to https://huggingface.co/spaces/{args.repo_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
