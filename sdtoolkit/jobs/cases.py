"""The one CSV case reader: a benchmark CSV read as text, columns checked, case range selected."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from sdtoolkit.core.errors import UsageError


def read_cases(path: str, columns: tuple[str, ...], from_case: int | None, end_case: int | None) -> pd.DataFrame:
    """Read the CSV as text, check its columns and select the cases from_case <= case_number < end_case (the
    reference's range: ``--end_case`` is exclusive; clear errors, exit 2)."""
    csv = Path(path)
    if not csv.is_file():
        raise UsageError(f"--prompts_path {path!r} does not exist")
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UsageError(f"{path} is empty; expected the columns {', '.join(columns)}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not a readable CSV file ({str(exc).strip().splitlines()[-1]})") from None
    if not isinstance(df.index, pd.RangeIndex):  # pandas made the surplus leading fields an index: columns shifted
        raise UsageError(f"{path}: the rows have more fields than the header ({', '.join(map(str, df.columns))}); "
                         "quote texts that contain commas") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UsageError(f"{path} lacks the column(s) {', '.join(missing)}; columns found: {', '.join(map(str, df.columns))}")
    if df.empty:
        raise UsageError(f"{path} has no rows")
    try:
        cases = df["case_number"].astype(int)
    except ValueError:
        raise UsageError(f"{path}: case_number must be integers, found {list(df['case_number'])}") from None
    except OverflowError:
        big = next(v for v in df["case_number"] if not -2**63 <= int(v) < 2**63)
        raise UsageError(f"{path}: case_number {big} is outside the 64-bit integer range [-2**63, 2**63)") from None
    repeated = sorted(set(cases[cases.duplicated()]))
    if repeated:
        raise UsageError(f"{path}: case_number {repeated} appear(s) more than once; case numbers name the output files")
    df = df.assign(case_number=cases.astype(str))  # "03" and "3" are the same case everywhere
    keep = (cases >= (from_case if from_case is not None else cases.min())) & (
        cases < (end_case if end_case is not None else cases.max() + 1))
    if not keep.any():
        raise UsageError(f"--from_case {from_case} --end_case {end_case} selects no case; the CSV holds the cases {sorted(cases)}")
    return df[keep]


def resolve_image(image_path: str, csv_path: str) -> str:
    """The image as written (relative to the working folder), else relative to the CSV's folder or its parent."""
    for base in (Path.cwd(), Path(csv_path).resolve().parent, Path(csv_path).resolve().parent.parent):
        candidate = base / image_path
        if candidate.is_file():
            return str(candidate)
    return image_path
