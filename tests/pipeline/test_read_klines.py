"""read_klines (contract): real files, in both timestamp units, with and without a header."""

from __future__ import annotations

import zipfile
from datetime import datetime, timezone

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from lem_pipeline.bars import ResampleConfig, resample_klines
from lem_pipeline.sources.binance import KLINE_COLUMNS, DataVisionError, read_klines
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
    csv = tmp_path / "BTCUSDT-1h-2020-01.csv"
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


def _rewritten(tmp_path, name: str, lines: list[str]):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(name.replace(".zip", ".csv"), "\n".join(lines) + "\n")
    return path


def test_a_candle_filed_in_the_wrong_month_is_refused_naming_the_file_and_row(tmp_path):
    # January's file with its first candle replaced by February's first: the row count is right
    # and every row would validate, but joined with February that candle would be summed twice.
    january = _lines(SPOT)
    february = _lines(SPOT.with_name("BTCUSDT-1h-2020-02.zip"))
    bad = _rewritten(tmp_path, SPOT.name, january[1:] + february[:1])
    with pytest.raises(DataVisionError, match=r"BTCUSDT-1h-2020-01\.zip: 1 candle\(s\) outside the file's period "
                                              r"\[2020-01-01, 2020-02-01\) or off its 1h grid, the first at data row 744 "
                                              r"\(open_time 2020-02-01 00:00:00\+00:00\)"):
        read_klines(bad)


def test_a_candle_off_the_interval_grid_is_refused(tmp_path):
    lines = _lines(SPOT)
    fields = lines[9].split(",")
    fields[0] = str(int(fields[0]) + 28 * 60_000 + 14_789)  # 09:28:14.789, as Binance once published
    bad = _rewritten(tmp_path, SPOT.name, lines[:9] + [",".join(fields)] + lines[10:])
    with pytest.raises(DataVisionError, match=r"off its 1h grid, the first at data row 10 "
                                              r"\(open_time 2020-01-01 09:28:14.789"):
        read_klines(bad)


def test_resampling_refuses_two_candles_in_one_slot():
    january = read_klines(SPOT).with_columns(pl.lit("BTCUSDT").alias("symbol"))
    twice = pl.concat([january, january.head(1)])
    with pytest.raises(ValueError, match=r"BTCUSDT: 2 candles share an open_time with another, the first at "
                                         r"2020-01-01 00:00:00"):
        resample_klines(twice, 60, ResampleConfig(base_minutes=60))
    assert resample_klines(january, 60, ResampleConfig(base_minutes=60))["volume"].sum() == pytest.approx(
        january["volume"].sum())


def test_a_file_polars_cannot_type_is_a_data_vision_error_naming_it(tmp_path):
    lines = _lines(SPOT)
    bad = _rewritten(tmp_path, SPOT.name, [lines[0] + ",extra"] + lines[1:])
    with pytest.raises(DataVisionError, match=r"BTCUSDT-1h-2020-01\.zip: cannot parse as a Data Vision kline CSV"):
        read_klines(bad)
