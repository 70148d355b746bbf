"""Upload a checkpoint folder to the Hugging Face Hub with a generated model card (method, bits,
group size, calibration data, evaluation table when present). Token: HF_TOKEN or `hf auth login`."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="checkpoint folder to upload")
    p.add_argument("repo_id", metavar="REPO_ID", help="hub repository, e.g. user/model-gptq-w4g128")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--no-card", dest="card", action="store_false",
                   help="do not generate README.md (a README.md in the folder is always kept)")
    p.add_argument("--commit-message", default=None, help="commit message (default: Upload <folder> (lowbit))")


def run(args: argparse.Namespace) -> int:
    from ..export.hub import push

    url = push(args.path, args.repo_id, private=args.private, card=args.card, commit_message=args.commit_message)
    print(f"pushed {args.path} to {args.repo_id}: {url}")
    return 0
