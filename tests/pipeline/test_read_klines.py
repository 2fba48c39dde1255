"""read_klines (contract): real files, in both timestamp units, with and without a header."""

from __future__ import annotations

import zipfile
from datetime import datetime, timezone

import polars as pl
from polars.testing import assert_frame_equal

from lem_pipeline.sources.binance import KLINE_COLUMNS, read_klines
from tests.conftest import BINANCE_MIRROR

SPOT = BINANCE_MIRROR / "data/spot/monthly/klines/BTCUSDT/1h/BTCUSDT-1h-2020-01.zip"
FUTURES = BINANCE_MIRROR / "data/futures/um/monthly/klines/ALGOUSDT/1m/ALGOUSDT-1m-2024-02.zip"


def _lines(path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return zf.read(zf.namelist()[0]).decode().splitlines()


def test_columns_types_and_values_of_a_real_spot_file():
    df = read_klines(SPOT)
    assert df.columns == KLINE_COLUMNS
    assert df.schema["open_time"] == pl.Datetime("us", "UTC")
    assert df.schema["trades"] == pl.Int64
    lines = _lines(SPOT)
    assert len(df) == len(lines) == 744  # 31 days x 24 hours
    first = lines[0].split(",")
    assert df["open_time"][0] == datetime(2020, 1, 1, tzinfo=timezone.utc)
    assert df.row(0) == (df["open_time"][0], *map(float, first[1:6]), float(first[7]), int(first[8]),
                         float(first[9]), float(first[10]))


def test_microsecond_open_time_parses_to_the_same_rows(tmp_path):
    lines = _lines(SPOT)
    rewritten = []
    for line in lines:
        f = line.split(",")
        f[0], f[6] = str(int(f[0]) * 1000), str(int(f[6]) * 1000 + 999)
        rewritten.append(",".join(f))
    csv = tmp_path / "BTCUSDT-1h-2025-01.csv"
    csv.write_text("\n".join(rewritten) + "\n")
    assert_frame_equal(read_klines(csv), read_klines(SPOT))


def test_header_and_headerless_files_parse_alike(tmp_path):
    lines = _lines(FUTURES)
    assert lines[0].startswith("open_time,")
    headerless = tmp_path / "ALGOUSDT-1m-2024-02.csv"
    headerless.write_text("\n".join(lines[1:]) + "\n")
    with_header = read_klines(FUTURES)
    assert len(with_header) == len(lines) - 1
    assert_frame_equal(read_klines(headerless), with_header)
    spot_with_header = tmp_path / "spot.zip"
    with zipfile.ZipFile(spot_with_header, "w") as zf:
        zf.writestr("spot.csv", "\n".join([lines[0], *_lines(SPOT)]) + "\n")
    assert_frame_equal(read_klines(spot_with_header), read_klines(SPOT))
