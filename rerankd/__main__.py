from rerankd.cli import main

# Guarded: engines that spawn worker processes (vLLM) re-import the main module in each child.
if __name__ == "__main__":
    raise SystemExit(main())
