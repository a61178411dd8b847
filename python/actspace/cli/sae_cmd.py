"""`actspace sae list [RELEASE]` and `actspace sae fetch RELEASE ID`: the pretrained SAE
releases actspace knows (decompose/pretrained/releases.yaml plus the user's registry
files), and downloading one SAE into the Hugging Face cache ahead of an offline run."""
from __future__ import annotations

HELP = "list pretrained SAE releases, or fetch one SAE from the Hugging Face Hub"


def add_arguments(p) -> None:
    p.add_argument("--registry", action="append", default=None, metavar="FILE",
                   help="extra release registry YAML (repeatable; also ACTSPACE_SAE_RELEASES)")
    sub = p.add_subparsers(dest="sae_command", required=True)
    ls = sub.add_parser("list", help="list releases, or the SAEs of one release")
    ls.add_argument("release", nargs="?", default=None)
    f = sub.add_parser("fetch", help="download one SAE (only its files) into the HF cache")
    f.add_argument("release", help="release name, or an hf://org/repo/folder URI")
    f.add_argument("sae_id", nargs="?", default=None, help="SAE id within the release")
    f.add_argument("--revision", default=None, help="branch, tag or commit to pin")
    f.add_argument("--refresh", action="store_true",
                   help="ask the Hub for the revision's newest commit even when cached")
    f.add_argument("--no-progress", action="store_true")


def _fmt_l0(l0) -> str:
    return "-" if l0 is None else f"{l0:g}"


def _list(args) -> int:
    from actspace.decompose.pretrained import get_release, load_registry

    reg = load_registry(args.registry)
    if args.release is None:
        print(f"{'release':40s} {'layout':13s} {'#saes':>6s}  repo / model")
        for name in sorted(reg):
            r = reg[name]
            n = f"{len(r.saes)}{'+' if r.open else ''}"
            print(f"{name:40s} {r.layout:13s} {n:>6s}  {r.repo}@{r.revision} / {r.model or '-'}")
        return 0
    r = get_release(args.release, reg)
    print(f"{r.name}: {r.repo}@{r.revision}, layout {r.layout}, model {r.model or '-'}"
          + (" (open: any folder of the repo is an id too)" if r.open else ""))
    for s in r.saes:
        print(f"  {s.id:50s} l0={_fmt_l0(s.l0):>6s}  {s.path}")
    return 0


def _fetch(args) -> int:
    import actspace as acts

    kw = dict(revision=args.revision, refresh=args.refresh, progress=not args.no_progress,
              registry=args.registry)
    if args.release.startswith("hf://"):
        if args.sae_id is not None:
            raise ValueError("give either an hf:// URI or RELEASE ID, not both")
        sae = acts.SAE.load(args.release, **kw)
    else:
        if args.sae_id is None:
            raise ValueError(f"which SAE of {args.release!r}? (`actspace sae list "
                             f"{args.release}`)")
        sae = acts.SAE.from_pretrained(args.release, args.sae_id, **kw)
    p = sae.provenance
    print(f"{p['repo']}@{p['commit']} {p['path']} ({p['layout']}): d_in={sae.d_in} "
          f"d_sae={sae.d_sae} d_out={sae.d_out} kind={sae.kind} hook={sae.hookpoint}")
    for name, info in p["files"].items():
        print(f"  {name}  sha256={info['sha256']}  {info['bytes']} bytes")
    return 0


def run(args) -> int:
    return _list(args) if args.sae_command == "list" else _fetch(args)
