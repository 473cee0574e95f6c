"""The Markdown report of `bench_state_update.py`: cost ratios, errors against the reference, and where the time goes."""

from __future__ import annotations

from typing import Any

from benchmarks.report import key_value_markdown


def ratio(v: dict[str, Any]) -> float:
    """The probe's cost in plain forwards: each run over the forward timed just before it (median);
    results written before paired timing have only the ratio of medians."""
    return v.get("paired_state_over_plain", v["state_over_plain"])


def ratio_note(v: dict[str, Any]) -> str:
    if "paired_state_over_plain" not in v:
        return ""
    return (
        f" (median of each run over the plain forward just before it; fastest over fastest "
        f"{v['fastest_state_over_fastest_plain']:.2f}x, median over median {v['state_over_plain']:.2f}x)"
    )


def error_text(e: dict[str, Any]) -> str:
    return "n/a" if not e.get("count") else f"max {e['max']:.1e}, median {e['median']:.1e}, 99.9% {e['p99_9']:.1e}"


def phases_text(ph: dict[str, Any], plain_s: float, n_layer: int) -> str:
    m, ms = ph["median_s"], lambda s: f"{s * 1e3:.1f} ms"  # noqa: E731
    calls = ph["calls_per_run"].get("update_stats", n_layer)
    text = (
        f"median of {ph['runs']} runs without overlap ({ph['timer']}): total {ms(m['total'])} = forward with hooks {ms(m['forward_with_hooks'])} "
        f"(the wall time less the calls below; plain forward {ms(plain_s)}) + ssm_inputs {ms(m.get('ssm_inputs', 0.0))} + update_stats {ms(m.get('update_stats', 0.0))} "
        f"over {calls} layers ({ms(m.get('update_stats', 0.0) / max(calls, 1))} a layer)"
    )
    if "conv_kernel" in m:
        text += f"; inside ssm_inputs: fused conv kernel {ms(m['conv_kernel'])}"
    if "carry_kernel" in m:
        text += (
            f"; inside update_stats: carry kernel {ms(m['carry_kernel'])} ({ph['calls_per_run'].get('carry_kernel', 0)} launches), "
            f"chunk kernel {ms(m.get('chunk_kernel', 0.0))}, "
            f"the rest (gram_b matmul, expm1, segment scan, buffers) {ms(m['triton_outside_kernels'])}"
        )
    return text


def markdown(r: dict[str, Any]) -> str:
    mib = 1024**2
    ok = lambda good: "meets" if good else "MISSES"  # noqa: E731
    ref = r["reference"]
    rows = [
        ("device", r["device"]),
        ("forward kernels", r["kernels"]),
        *(
            [("Triton carry tile PxNxWARPSxSEGxCHUNKWARPS when not named", r["triton_default_tile"])]
            if r.get("triton_default_tile")
            else []
        ),
        *([("layers the overlapped probe may lag the forward", str(r["overlap_layers"]))] if "overlap_layers" in r else []),
        (
            "model",
            f"MambaLM {r['shape']} ({r['lm']['n_layer']} layers x {r['lm']['nheads']} heads, headdim {r['lm']['headdim']}, d_state {r['lm']['d_state']}), {r['model_dtype']}",
        ),
        ("input", f"{r['batch']} x {r['tokens']} tokens"),
        ("CPU threads / 1-min load average at the end", f"{r['threads']} / {r['load_average_1m']:.1f}"),
        ("command", f"`{r['command']}`"),
        (
            "plain forward (median)",
            f"{r['median_plain_s'] * 1e3:.1f} ms"
            + (
                f" (fastest {min(r['plain_forward_s']) * 1e3:.1f} ms, slowest {max(r['plain_forward_s']) * 1e3:.1f} ms)"
                if len(r["plain_forward_s"]) > 1
                else ""
            ),
        ),
        (
            "token-by-token reference (float64)",
            f"{ref['seconds_all_layers']:.2f} s"
            + ("" if ref["layers_timed"] == r["lm"]["n_layer"] else f"; timed on {ref['layers_timed']} layers and scaled"),
        ),
    ]
    for key, v in r["variants"].items():
        rows += [
            (
                f"**probe {key}**: forward + distances, every layer/head/token (median)",
                f"{v['median_s'] * 1e3:.1f} ms = {ratio(v):.2f}x the plain forward ({ok(ratio(v) <= 1.5)} <= 1.5x){ratio_note(v)}; "
                f"reference is {v['reference_over_state']:.1f}x slower ({ok(v['reference_over_state'] >= 50)} >= 50x); "
                f"probe work alone {v['reference_extra_over_state_extra']:.1f}x cheaper than the reference's (forward subtracted from both)",
            ),
            (
                f"probe {key}: extra memory",
                f"{v['extra_memory_bytes'] / mib:.1f} MiB measured ({r['memory']['kind']}); "
                f"largest per-layer transient [b, T, heads, chunk] about {v['largest_transient_bytes_estimate'] / mib:.1f} MiB; results kept {v['output_bytes'] / mib:.2f} MiB",
            ),
        ]
        if v.get("phases"):
            rows.append((f"probe {key}: where the time goes", phases_text(v["phases"], r["median_plain_s"], r["lm"]["n_layer"])))
        for against, e in v["relative_error"].items():
            what = "the float64 reference" if against == "vs_reference" else f"the float64 closed form ({e['against']})"
            rows.append(
                (
                    f"probe {key}: relative error vs {what}, {e['layers']} layers",
                    f"distance {error_text(e['distance'])}; state norm {error_text(e['state_norm'])}",
                )
            )
    rows += [
        ("storing every h_t (float32) instead would take", f"{r['all_states_would_take_bytes'] / mib:.0f} MiB"),
        ("versions", ", ".join(f"{k} {v}" for k, v in r["versions"].items())),
    ]
    return key_value_markdown("State-update distance cost", rows)
