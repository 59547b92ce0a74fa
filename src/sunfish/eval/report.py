"""`sunfish eval`: run the suites on one checkpoint, print a table, write eval.json and a Markdown report
with plots; `sunfish compare`: several evaluated runs side by side.

Suites: likelihood (eval/likelihood.py), generation (eval/generative.py), infill (eval/infill.py),
translation (eval/translation.py), instruct (eval/instruct.py: rows from `sunfish data instruct`). A suite the
model cannot run (a causal model has no infilling, a process kind without a likelihood estimator) is recorded
as {"skipped": "<sentence>"} and the others still run. Files are written to a temporary name and renamed, so a
killed evaluation never leaves half a file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable

from sunfish.checkpoint.files import run_dir_of
from sunfish.config import EvalConfig
from sunfish.fileio import write_text_atomic

SUITES = ("likelihood", "generation", "infill", "translation", "instruct")
ASKED_ONLY = ("instruct",)  # suites that run only when named: their --data is conversations, not text


class EvalError(ValueError):
    """Bad evaluation input; the message is one sentence."""


def parse_suites(spec: str, has_parallel: bool) -> list[str]:
    default = [s for s in SUITES if (s != "translation" or has_parallel) and s not in ASKED_ONLY]
    asked = [s.strip() for s in spec.split(",") if s.strip()] if spec else default
    unknown = [s for s in asked if s not in SUITES]
    if unknown:
        raise EvalError(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    if "translation" in asked and not has_parallel:
        raise EvalError("the translation suite needs a parallel file: pass --parallel FILE.tsv (columns en and ru)")
    return asked


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---- running ---------------------------------------------------------------------------------------------

def _skip(err: Exception) -> dict:
    return {"skipped": str(err)}


def run_eval(path: str | Path, data: list[str], suites: list[str], cfg: EvalConfig, *, ref_model: str | None = None,
             parallel: str | None = None, device: str = "auto", dtype: str = "auto", quantize: str = "none",
             log: Callable[[str], None] = print) -> dict:
    """Evaluate a run or checkpoint folder on held-out `data`; returns the eval.json body."""
    from sunfish.data.sources import read_documents
    from sunfish.eval.generative import generation_suite, load_reference
    from sunfish.eval.infill import InfillUnsupported, infill_suite
    from sunfish.eval.instruct import instruct_suite, read_rows
    from sunfish.eval.likelihood import UnsupportedProcess, held_out
    from sunfish.eval.translation import TranslationUnsupported, read_pairs, translation_suite
    from sunfish.api import load
    from sunfish.runtime import setup_runtime

    if "translation" in suites:
        read_pairs(parallel, cfg.translation_direction)  # a bad file or direction fails before any work
    if "instruct" in suites:
        if {"likelihood", "infill"} & set(suites):
            raise EvalError("--data holds the instruct suite's conversations, not held-out text; run likelihood and infill in another `sunfish eval`")
        read_rows(data)  # so does a bad instruct row
    rt = setup_runtime(device)
    loaded = load(path, device=str(rt.device), dtype=dtype, quantize=quantize)
    docs = read_documents(data) if data and "instruct" not in suites else []  # instruct's --data is its rows
    if not docs and any(s in suites for s in ("likelihood", "infill")):
        raise EvalError("the likelihood and infill suites need held-out text: pass --data FILE...")
    seq_len = min(cfg.seq_len or loaded.cfg.train.seq_len or loaded.cfg.model.context, loaded.cfg.model.context)
    body: dict = {"checkpoint": str(loaded.path), "run_dir": str(run_dir_of(loaded.path)),
                  "step": loaded.step, "process": loaded.cfg.process.kind.value,
                  "block_size": loaded.cfg.process.block_size, "loss": loaded.cfg.process.loss.value,
                  "preset": loaded.cfg.preset, "data": [str(d) for d in data], "seq_len": seq_len,
                  "eval_config": dataclasses.asdict(cfg), "suites": {}}
    windows = held_out(docs, loaded.tokenizer, seq_len, cfg.max_tokens) if docs else None
    for suite in suites:
        began = time.perf_counter()
        log(f"[{suite}]")
        try:
            if suite == "likelihood":
                body["suites"][suite] = _likelihood(loaded, windows, cfg, rt, log)
            elif suite == "generation":
                ref = load_reference(ref_model, rt.device) if ref_model else None
                if ref is None:
                    log("  no --ref-model: generative perplexity is not measured, diversity only")
                body["suites"][suite] = [g.as_json() for g in generation_suite(loaded, ref, cfg, log=log)]
            elif suite == "infill":
                full = [w for w in windows.windows if w.shape[1] == seq_len]
                if not full:
                    raise EvalError(f"the held-out text is shorter than one window of {seq_len} tokens; pass more text for the infill suite")
                body["suites"][suite] = [r.as_json() for r in infill_suite(loaded, full[0], cfg, log=log)]
            elif suite == "instruct":
                body["suites"][suite] = instruct_suite(loaded, data, cfg, log=log)
            else:
                body["suites"][suite] = translation_suite(loaded, parallel, cfg, log=log).as_json()
        except (UnsupportedProcess, InfillUnsupported, TranslationUnsupported) as err:
            log(f"  skipped: {err}")
            body["suites"][suite] = _skip(err)
        if isinstance(body["suites"][suite], dict):
            body["suites"][suite]["seconds"] = round(time.perf_counter() - began, 2)
    return body


def _likelihood(loaded, windows, cfg: EvalConfig, rt, log: Callable[[str], None]) -> dict:
    """The likelihood suite: the process's estimator, or for a latent model (no bound exists) the sentence that
    says so with its reconstruction token accuracy."""
    from sunfish.eval.likelihood import evaluate_likelihood, reconstruction_suite

    if loaded.spec.reconstruction is not None:
        result = reconstruction_suite(loaded.model, loaded.cfg.process, windows, cfg.batch_size)
        log(f"  {result['no_likelihood']}: {result['reconstruction_accuracy']:.4f}")
        return result
    estimate = evaluate_likelihood(loaded.model, loaded.cfg.process, loaded.tokenizer.mask_id, windows, cfg,
                                   autocast=rt.autocast)
    log("  " + estimate.line())
    return estimate.as_json()


# ---- tables ----------------------------------------------------------------------------------------------

def summary_rows(body: dict) -> list[tuple[str, str]]:
    """(metric, value) rows of one evaluation, for the terminal table and the Markdown report."""
    rows: list[tuple[str, str]] = [("checkpoint", f"{body['checkpoint']} (step {body['step']})"),
                                   ("process", body["process"] + (f", block {body['block_size']}" if body.get("block_size") else ""))]
    suites = body["suites"]
    lik = suites.get("likelihood")
    if lik and "no_likelihood" in lik:
        rows.append(("likelihood", lik["no_likelihood"]))
        rows.append(("reconstruction", f"token accuracy {lik['reconstruction_accuracy']:.4f} over {lik['tokens']:,} tokens"))
    elif lik and "skipped" not in lik:
        how = lik["method"] if lik["exact"] else f"{lik['method']}, {lik['rounds']} rounds"
        pm = "" if lik["exact"] else f" ± {lik['perplexity_se']:.3f}"
        bound = "" if lik["exact"] else "<= "
        rows += [("perplexity", f"{bound}{lik['perplexity']:.3f}{pm} ({how})"),
                 ("bits per byte", f"{lik['bits_per_byte']:.4f}" + ("" if lik["exact"] else f" ± {lik['bits_per_byte_se']:.4f}"))]
    for name in SUITES:
        if isinstance(suites.get(name), dict) and isinstance(suites[name].get("skipped"), str):
            rows.append((name, "skipped: " + suites[name]["skipped"]))
    for g in suites.get("generation", []) if isinstance(suites.get("generation"), list) else []:
        ppl = f"gen. ppl {g['gen_perplexity']:.2f}, " if g["gen_perplexity"] is not None else ""
        rows.append((f"generation, {g['steps']} steps", f"{ppl}distinct-1/2/3 {g['distinct_1']:.3f}/{g['distinct_2']:.3f}/"
                     f"{g['distinct_3']:.3f}, entropy {g['unigram_entropy']:.2f} bits, rep-4 {g['repetition_4']:.3f}, "
                     f"{g['tokens_per_s']:.0f} tok/s"))
    for r in suites.get("infill", []) if isinstance(suites.get("infill"), list) else []:
        rows.append((f"infill, span {r['span']}", f"token acc. {r['token_accuracy']:.3f}, exact {r['exact_match']:.3f}, "
                     f"fill ppl <= {r['fill_perplexity']:.2f} ± {r['fill_perplexity'] * r['fill_se']:.2f}"))
    tr = suites.get("translation")
    if tr and "skipped" not in tr:
        rows.append((f"translation {tr['direction']}", f"BLEU {tr['bleu']:.2f}, chrF {tr['chrf']:.2f} ({tr['pairs']} pairs)"))
    ins = suites.get("instruct")
    if ins and "skipped" not in ins:
        from sunfish.eval.instruct import summary_lines

        rows += summary_lines(ins)
    return rows


def text_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# ---- plots -----------------------------------------------------------------------------------------------

def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise EvalError("plots need matplotlib; pip install 'sunfish[eval]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def plot_loss_curves(runs: dict[str, list[dict]], path: Path) -> bool:
    """Training (and validation) loss against step, one line per run; False when no run logged metrics."""
    runs = {name: m for name, m in runs.items() if m}
    if not runs:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, metrics in runs.items():
        line, = ax.plot([m["step"] for m in metrics], [m["loss"] for m in metrics], label=f"{name} train", alpha=0.8)
        val = [m for m in metrics if "val_loss" in m]
        if val:
            ax.plot([m["step"] for m in val], [m["val_loss"] for m in val], "o--", color=line.get_color(), label=f"{name} val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
    return True


def _quality(g: dict) -> tuple[float, str]:
    if g["gen_perplexity"] is not None:
        return g["gen_perplexity"], "generative perplexity"
    return g["unigram_entropy"], "unigram entropy (bits)"


def plot_generation(runs: dict[str, list[dict]], folder: Path) -> list[str]:
    """Quality against sampling steps and against tokens/s; returns the written file names."""
    runs = {name: g for name, g in runs.items() if g}
    if not runs:
        return []
    plt = _pyplot()
    written = []
    for x_key, x_label, name in (("steps", "sampling steps", "quality_vs_steps.png"),
                                 ("tokens_per_s", "tokens / s (sampling)", "quality_vs_speed.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4))
        label = ""
        for run, gens in runs.items():
            ys = [_quality(g) for g in gens]
            label = ys[0][1]
            ax.plot([g[x_key] for g in gens], [y for y, _ in ys], "o-", label=run)
        ax.set_xscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        _save(fig, folder / name)
        plt.close(fig)
        written.append(name)
    return written


# ---- reports ---------------------------------------------------------------------------------------------

def write_report(body: dict, out: Path) -> Path:
    """out/eval.json, out/report.md and its plots."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "eval.json", json.dumps(body, indent=2, ensure_ascii=False) + "\n")
    lines = [f"# Evaluation of `{body['checkpoint']}`", "",
             markdown_table(["metric", "value"], [[k, v] for k, v in summary_rows(body)]), ""]
    if plot_loss_curves({"run": read_metrics(Path(body["run_dir"]))}, out / "loss.png"):
        lines += ["## Loss curves", "", "![loss](loss.png)", ""]
    gens = body["suites"].get("generation")
    if isinstance(gens, list):
        for name in plot_generation({"run": gens}, out):
            title = "Quality vs sampling steps" if "steps" in name else "Quality vs speed"
            lines += [f"## {title}", "", f"![{title}]({name})", ""]
        lines += ["## Samples", ""] + [f"- {json.dumps(e, ensure_ascii=False)}" for g in gens[-1:] for e in g["examples"]] + [""]
    ins = body["suites"].get("instruct")
    if ins and "groups" in ins:
        lines += ["## Instruct replies", ""] + [f"- {g['task']} {g['lang']}: {json.dumps(e, ensure_ascii=False)}"
                                                for g in ins["groups"] for e in g["examples"]] + [""]
    cfg = body["eval_config"]
    lines += ["## Settings", "", f"Held-out data: {', '.join(body['data']) or '(none)'}; windows of {body['seq_len']} tokens; "
              f"seed {cfg['seed']}; Monte Carlo until s.e. < {cfg['rel_se']:.0%} of the estimate "
              f"({cfg['min_rounds']}..{cfg['max_rounds']} rounds).", ""]
    write_text_atomic(out / "report.md", "\n".join(lines))
    return out / "report.md"


def load_evaluation(run: Path) -> dict:
    """eval.json of a run: RUN/eval/eval.json, RUN/eval.json, or the file itself."""
    for path in (run / "eval" / "eval.json", run / "eval.json", run):
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                raise EvalError(f"'{path}' is not valid JSON; run `sunfish eval` on that run again") from None
    raise EvalError(f"'{run}' has no eval.json; run `sunfish eval {run}` first")


def compare(runs: list[Path], out: Path | None = None) -> str:
    """A Markdown table of several evaluated runs side by side (+ compare.md and plots under `out`)."""
    bodies = [load_evaluation(r) for r in runs]
    names = [Path(b["run_dir"]).name or str(r) for b, r in zip(bodies, runs)]
    names = [n if names.count(n) == 1 else f"{n} ({i})" for i, n in enumerate(names)]
    keys: list[str] = []
    cells: list[dict[str, str]] = []
    for body in bodies:
        row = dict(summary_rows(body)[1:])
        metrics = read_metrics(Path(body["run_dir"]))
        if metrics:
            row["final train loss"] = f"{metrics[-1]['loss']:.4f}"
        cells.append(row)
        keys += [k for k in row if k not in keys]
    table = markdown_table(["metric", *names], [[k, *(c.get(k, "") for c in cells)] for k in keys])
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        lines = ["# Comparison", "", table, ""]
        if plot_loss_curves({n: read_metrics(Path(b["run_dir"])) for n, b in zip(names, bodies)}, out / "loss.png"):
            lines += ["![loss](loss.png)", ""]
        gens = {n: b["suites"]["generation"] for n, b in zip(names, bodies) if isinstance(b["suites"].get("generation"), list)}
        lines += [f"![{name}]({name})" for name in plot_generation(gens, out)]
        write_text_atomic(out / "compare.md", "\n".join(lines) + "\n")
    return table
