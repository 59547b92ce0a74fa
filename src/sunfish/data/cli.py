"""Command-line verbs of the data pipeline: `sunfish data prepare|instruct` and `sunfish tokenizer train|extend|stats`.

`register(verbs)` adds them to the main parser's sub-commands (`prepare` and `instruct` join the existing `data`
group); `dispatch(args)` runs one of them and returns its exit code, or None for a verb that is not
ours. Library work is imported inside each command so `sunfish --help` stays fast.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from sunfish.data.pack import PackConfig
from sunfish.data.sources import DataError
from sunfish.data.tarshards import ShardFormat
from sunfish.flags import add_section, given, subcommands


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _add_prepare(group: argparse._SubParsersAction) -> None:
    p = group.add_parser("prepare", help="clean, deduplicate, tokenize and pack text into token shards",
                         description="Inputs: files, folders, hf:NAME[:CONFIG][/SPLIT]; name one as NAME=PATH.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=".txt/.jsonl/.parquet (optionally .gz), folders, hf:...")
    p.add_argument("--out", type=Path, required=True, help="output folder for shards and manifest.json")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", type=Path, help="an existing tokenizer.json (or its folder)")
    tok.add_argument("--train-tokenizer", type=int, metavar="VOCAB", help="train a byte-level BPE of VOCAB tokens (default 32768)")
    p.add_argument("--mix", nargs="+", metavar="SOURCE=WEIGHT", help="sampling weights by source name or language")
    p.add_argument("--langs", type=_csv, default=("en", "ru"), help="languages to keep (default en,ru)")
    p.add_argument("--lang-threshold", type=float, default=0.5, help="language confidence below which a document is dropped")
    p.add_argument("--dedup", type=_csv, default=("exact", "minhash"), help="exact,minhash | exact | minhash | none")
    p.add_argument("--minhash-threshold", type=float, default=0.8, help="Jaccard similarity of near-duplicates (default 0.8)")
    p.add_argument("--min-words", type=int, default=20, help="shortest document kept, in words (default 20)")
    p.add_argument("--no-quality", action="store_true", help="skip the quality rules")
    p.add_argument("--no-pii", action="store_true", help="keep e-mails, phones, IPs and card numbers")
    p.add_argument("--text-field", default="text", help="JSON field / Parquet column / dataset column with the text")
    p.add_argument("--workers", type=int, default=0, help="worker processes (default: one per CPU)")
    p.add_argument("--keep-rejects", action="store_true", help="write removed documents to OUT/rejects/REASON.jsonl")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--format", choices=[f.value for f in ShardFormat], default=ShardFormat.MMAP.value, dest="shard_format",
                   help="mmap: memory-mapped shards (default); tar: WebDataset tar shards to stream from a folder or URL")
    add_section(p, PackConfig, short=("seq_len", "val_fraction", "seed", "shard_tokens"))
    p.set_defaults(config_sections={"pack": None})


def _add_instruct(group: argparse._SubParsersAction) -> None:
    p = group.add_parser("instruct", help="write scored instruction data: story questions, story writing, translation",
                         description="Writes OUT/train.jsonl and OUT/test.jsonl ({\"messages\": [...], \"check\": {...}} per line).")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--lang", choices=["en", "ru", "both"], default="both", help="languages (translation needs both)")
    p.add_argument("--n", type=int, default=5000, help="rows in all, train and test (default 5000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--held-out", type=float, default=0.1, help="fraction of the rows in test.jsonl (default 0.1)")
    p.add_argument("--corpora", type=Path, help="folder holding parallel_en_ru_tatoeba/ (default: ../shared/corpora where found)")


def _add_tokenizer(verbs: argparse._SubParsersAction) -> None:
    t = verbs.add_parser("tokenizer", help="train, extend and measure tokenizers")
    group = t.add_subparsers(dest="tokenizer_verb", required=True)
    tr = group.add_parser("train", help="train a byte-level BPE tokenizer")
    tr.add_argument("inputs", nargs="+", metavar="INPUT")
    tr.add_argument("--vocab", type=int, required=True, help="vocabulary size, special tokens included")
    tr.add_argument("--out", type=Path, required=True, help="FILE.json, or a folder for tokenizer.json + tokenizer_config.json")
    tr.add_argument("--text-field", default="text")
    ex = group.add_parser("extend", help="add tokens learned from new text to an existing BPE, keeping its ids")
    ex.add_argument("base", type=Path, help="the base tokenizer.json (any Hugging Face BPE) or its folder")
    ex.add_argument("inputs", nargs="+", metavar="INPUT", help="text to learn the new tokens from")
    ex.add_argument("--add", type=int, required=True, help="number of new tokens (the DLLM-RU plan: 2,000-5,000)")
    ex.add_argument("--out", type=Path, required=True, help="FILE.json, or a folder")
    ex.add_argument("--lang", help="learn only from documents identified as this language (e.g. ru)")
    ex.add_argument("--min-frequency", type=int, default=2, help="merges seen fewer times are not learned")
    ex.add_argument("--text-field", default="text")
    st = group.add_parser("stats", help="characters per token and tokens per word, per language")
    st.add_argument("tokenizers", nargs="+", type=Path, metavar="TOKENIZER", help="tokenizer.json files or folders")
    st.add_argument("--text", nargs="+", required=True, metavar="LANG=PATH", help="text of each language, e.g. ru=held_out.jsonl")
    st.add_argument("--max-docs", type=int, default=0, help="read at most this many documents per language (0 = all)")
    st.add_argument("--text-field", default="text")


def register(verbs: argparse._SubParsersAction) -> None:
    """Add `data prepare` (to the existing `data` group, or a new one) and `tokenizer train|extend|stats`."""
    data = verbs.choices.get("data") or verbs.add_parser("data", help="corpus tools")
    _add_prepare(subcommands(data, "data_verb"))
    _add_instruct(subcommands(data, "data_verb"))
    _add_tokenizer(verbs)


def dispatch(args: argparse.Namespace) -> int | None:
    """Run the verb if it is one of ours and return its exit code; None otherwise."""
    if args.verb == "data" and getattr(args, "data_verb", None) in ("prepare", "instruct"):
        command = cmd_prepare if args.data_verb == "prepare" else cmd_instruct
    elif args.verb == "tokenizer":
        command = {"train": cmd_tokenizer_train, "extend": cmd_tokenizer_extend, "stats": cmd_tokenizer_stats}[args.tokenizer_verb]
    else:
        return None
    try:
        return command(args)
    except ImportError as err:
        raise DataError(f"this command needs {err.name or 'an optional package'}; install the data extras with pip install 'sunfish[data]'") from None


def cmd_prepare(args: argparse.Namespace) -> int:
    from sunfish.data.clean import CleanConfig
    from sunfish.data.dedup import DedupConfig
    from sunfish.data.langid import check_languages
    from sunfish.data.mix import parse_mix
    from sunfish.config import apply_section
    from sunfish.data.prepare import prepare
    from sunfish.data.quality import QualityConfig

    unknown = set(args.dedup) - {"exact", "minhash", "none"}
    if unknown:
        raise DataError(f"unknown --dedup step(s) {', '.join(sorted(unknown))}; use exact, minhash or none")
    check_languages(args.langs)
    clean = CleanConfig(
        langs=args.langs, lang_threshold=args.lang_threshold, scrub_pii=not args.no_pii,
        quality=QualityConfig(enabled=not args.no_quality, min_words=args.min_words),
        dedup=DedupConfig(exact="exact" in args.dedup, minhash="minhash" in args.dedup, threshold=args.minhash_threshold),
    )
    pack = apply_section(PackConfig(), "pack", given(args, ("pack",)).get("pack", {}))
    result = prepare(args.inputs, args.out, clean=clean, pack=pack, tokenizer=args.tokenizer,
                     train_vocab=args.train_tokenizer or 32768, mix=parse_mix(args.mix), text_field=args.text_field,
                     workers=args.workers, keep_rejects=args.keep_rejects, progress=not args.no_progress,
                     shard_format=args.shard_format)
    print(result.report)
    where = f"{result.out} (or the URL you serve it from)" if args.shard_format == "tar" else result.out
    print(f"\nwrote {result.out / 'manifest.json'}; train with: sunfish train --data {where}")
    return 0


def cmd_instruct(args: argparse.Namespace) -> int:
    from sunfish.data.instruct import build_instruct, find_corpora, summary, write_instruct

    corpora = args.corpora or find_corpora()
    data = build_instruct(args.lang, args.n, args.seed, args.held_out, corpora)
    for note in data.notes:
        print(note)
    print(summary(data))
    train, test = write_instruct(data, args.out)
    print(f"\nwrote {len(data.train)} rows to {train} and {len(data.test)} to {test}")
    return 0


def _documents(inputs: list[str], text_field: str):
    from sunfish.data.sources import parse_sources

    for source in parse_sources(inputs, text_field):
        yield from source.documents()


def _save(tokenizer, out: Path) -> str:
    if out.suffix == ".json":
        tokenizer.save(out)
        return str(out)
    tokenizer.save_pretrained(out)
    return f"{out}/tokenizer.json (+ tokenizer_config.json)"


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from sunfish.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(_documents(args.inputs, args.text_field), args.vocab)
    print(f"trained a byte-level BPE of {tokenizer.vocab_size:,} tokens; wrote {_save(tokenizer, args.out)}")
    return 0


def _load_backend(path: Path):
    import tokenizers

    file = path / "tokenizer.json" if path.is_dir() else path
    try:
        return tokenizers.Tokenizer.from_file(str(file))
    except Exception as err:  # the library raises a bare Exception for missing or malformed files
        raise ValueError(f"cannot load the tokenizer '{file}' ({str(err).splitlines()[0]}); pass a tokenizer.json or its folder") from None


def cmd_tokenizer_extend(args: argparse.Namespace) -> int:
    from sunfish.tokenizer.extend import extend_tokenizer

    texts = _documents(args.inputs, args.text_field)
    if args.lang:
        from sunfish.data.langid import LanguageIdentifier

        ident = LanguageIdentifier((args.lang,), threshold=0.5)
        texts = (t for t in texts if ident.guess(t).code == args.lang)
    result = extend_tokenizer(_load_backend(args.base), texts, args.add, min_frequency=args.min_frequency)
    specials = f"; added the special tokens {', '.join(result.added_specials)}" if result.added_specials else ""
    print(f"base: {result.base_size:,} ids (unchanged); added {result.added:,} tokens "
          f"(ids {result.base_size:,}..{result.base_size + result.added - 1:,}){specials}; "
          f"total {result.tokenizer.vocab_size:,}; wrote {_save(result.tokenizer, args.out)}")
    return 0


def cmd_tokenizer_stats(args: argparse.Namespace) -> int:
    from sunfish.tokenizer.stats import compression_table

    texts = {}
    for spec in args.text:
        lang, eq, path = spec.partition("=")
        if not eq or not lang or not path:
            raise DataError(f"cannot read '--text {spec}'; write it as LANG=PATH, e.g. ru=held_out.jsonl")
        docs = _documents([path], args.text_field)
        texts[lang] = list(itertools.islice(docs, args.max_docs) if args.max_docs else docs)
    named = {}
    for path in args.tokenizers:
        name = path.parent.name if path.name == "tokenizer.json" else path.stem if path.suffix == ".json" else path.name
        named[name if name not in named else str(path)] = _load_backend(path)
    print(compression_table(named, texts)[0])
    return 0
