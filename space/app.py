#!/usr/bin/env python
"""hf_ddm Gradio Space.

    python space/app.py                 # http://127.0.0.1:7860
    python space/app.py --port 8000     # another port; --host 0.0.0.0 to listen on all interfaces

On Hugging Face Spaces this file is the ``app_file``; the Space sets GRADIO_SERVER_NAME / PORT itself.
Models: ``space/models/<name>/`` (a ``save_pretrained`` folder), or ``HF_DDM_MODEL_<NAME>=user/repo``;
without either, tiny untrained demo models are generated at start (the UI says so).
"""

import argparse
import logging
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the hf_ddm_space package (and, on a Space, a vendored hf_ddm) live beside this file
    sys.path.insert(0, HERE)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="hf_ddm diffusion demo (Gradio)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", os.environ.get("PORT", 7860))))
    p.add_argument("--host", default=None,
                   help="interface to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    p.add_argument("--default-model", default="ldm_class", help="the model shown first (the best shipped checkpoint)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: CPU cores / concurrent requests)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch

    from hf_ddm_space.ui import CSS, Limits, SpaceApp, build_demo

    limits = Limits.from_env()
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // max(1, limits.concurrency)))
    demo = build_demo(SpaceApp(limits=limits), default_model=args.default_model)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=CSS)


if __name__ == "__main__":
    main()
