"""``python -m evf_sam predict ...`` (see evf_sam.cli)."""

from evf_sam.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
