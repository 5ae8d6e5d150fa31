"""Time `parse_response` on about 1 MB of adversarial tags (deep nesting, mismatched closes, embedding tokens inside a
prompt) at several sizes, and print the time per MB: linear parsing keeps it flat. Usage: python tools/bench_parse.py"""
import time
from llmbind.tokens import parse_response

CASES = {"nested opens": lambda n: "<gen>" * n + "x" + "</gen>" * n,
         "mismatched closes": lambda n: "<gen>" * n + "</edit>" * n,
         "embeds in a prompt": lambda n: "<gen>" + "<seg>" * (2 * n) + "</gen>",
         "alternating": lambda n: "<gen> a <edit> b </gen> c </edit>" * (n // 4)}

if __name__ == "__main__":
    print(f"{'input':20} {'size':>9} {'time':>8} {'s/MB':>7}")
    for name, make in CASES.items():
        for n in (12_500, 50_000, 100_000):
            text = make(n)
            t0 = time.perf_counter(); r = parse_response(text); dt = time.perf_counter() - t0
            print(f"{name:20} {len(text) / 1e6:7.2f}MB {dt:7.3f}s {dt / (len(text) / 1e6):7.3f}  ({len(r.problems)} problems)")
