"""The browser app: ``python app.py --model toy`` serves http://127.0.0.1:7860 (docs/app.md)."""
from sdtoolkit.app.main import console

if __name__ == "__main__":
    raise SystemExit(console())
