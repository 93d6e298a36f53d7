"""Main command: run a CEM architecture search (``python -m experiments.cem_run``)."""
import argparse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.cem_run", description=__doc__)
    parser.parse_args(argv)
    print("cem_run: the CEM loop is not built yet.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
