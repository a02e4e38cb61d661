"""``python run_script.py PORT``: the programmatic API, then a line once it has returned."""

import sys

import polycorn

if __name__ == "__main__":
    polycorn.run("polycorn.demo:app", port=int(sys.argv[1]), log_level="info")
    print("polycorn.run returned", flush=True)
