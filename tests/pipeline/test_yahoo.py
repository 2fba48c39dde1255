"""Yahoo sources: the offline CSV folder, and the yfinance adapter fed yfinance's exact frame shape."""

from __future__ import annotations

from datetime import date

import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from lem_pipeline.presets import DOW_30
from lem_pipeline.schemas import DailyBars, validate
from lem_pipeline.sources import yahoo
from lem_pipeline.sources.yahoo import DAILY_COLUMNS, CsvDirectorySource, YahooSourceError, YFinanceSource
from tests.conftest import FULL_YAHOO_DIR, YAHOO_DIR, needs_full_mirror

START, END = date(2000, 1, 3), date(2024, 12, 31)


@needs_full_mirror
def test_offline_source_loads_all_30_dow_tickers():
    src = CsvDirectorySource(FULL_YAHOO_DIR)
    total = 0
    for ticker in DOW_30:
        df = src.load(ticker, START, END)
        assert df.columns == DAILY_COLUMNS
        assert validate(DailyBars, df.with_columns(pl.lit(ticker).alias("ticker")).select("ticker", *DAILY_COLUMNS)) is None
        assert (df["quote_volume"] == df["volume"] * df["adj_close"]).all()
        total += len(df)
    assert total == 179_335  # every row of the 30 files (the full mirror's README.md)
    assert str(src.load("CRM", START, END)["date"][0]) == "2004-06-23"
    assert str(src.load("V", START, END)["date"][0]) == "2008-03-19"


def test_offline_source_names_a_missing_ticker():
    with pytest.raises(YahooSourceError, match=r"ZZZZ: no file .*ZZZZ\.csv"):
        CsvDirectorySource(YAHOO_DIR).load("ZZZZ", START, END)


def _yfinance_frame(tickers: list[str], start: date, end: date) -> pd.DataFrame:
    """What yfinance 1.7 ``download(..., auto_adjust=False, multi_level_index=True)`` returns: a
    DatetimeIndex named 'Date' and (Price, Ticker) MultiIndex columns sorted by Price."""
    parts = {}
    for t in tickers:
        raw = pd.read_csv(YAHOO_DIR / f"{t}.csv", parse_dates=["Date"]).set_index("Date")
        raw = raw.loc[(raw.index >= pd.Timestamp(start)) & (raw.index < pd.Timestamp(end))]
        parts[t] = raw
    data = pd.concat(parts.values(), axis=1, sort=True, keys=parts.keys(), names=["Ticker", "Price"])
    data.columns = data.columns.swaplevel(0, 1)
    return data.sort_index(level=0, axis=1)


def test_yfinance_adapter_matches_offline_source(monkeypatch):
    calls = []

    def fake_download(tickers, start=None, end=None, auto_adjust=True, **kw):
        calls.append(dict(tickers=tickers, start=start, end=end, auto_adjust=auto_adjust, **kw))
        return _yfinance_frame([tickers], date.fromisoformat(start), date.fromisoformat(end))

    monkeypatch.setattr("yfinance.download", fake_download)
    got = YFinanceSource(backoff=0).load("MSFT", date(2010, 1, 4), date(2020, 12, 31))
    want = CsvDirectorySource(YAHOO_DIR).load("MSFT", date(2010, 1, 4), date(2020, 12, 31))
    assert_frame_equal(got, want)
    assert calls[0]["auto_adjust"] is False and calls[0]["end"] == "2021-01-01"  # end made inclusive


def test_yfinance_adapter_retries_empty_answers_then_names_the_ticker(monkeypatch):
    answers = [pd.DataFrame(), _yfinance_frame(["KO"], date(2020, 1, 1), date(2020, 2, 1))]
    monkeypatch.setattr("yfinance.download", lambda *a, **k: answers.pop(0))
    assert len(YFinanceSource(backoff=0).load("KO", date(2020, 1, 1), date(2020, 1, 31))) == 21
    monkeypatch.setattr("yfinance.download", lambda *a, **k: pd.DataFrame())
    with pytest.raises(YahooSourceError, match=r"KO: yfinance download failed after 3 attempts: KO: yfinance returned no rows"):
        YFinanceSource(max_retries=2, backoff=0).load("KO", date(2020, 1, 1), date(2020, 1, 31))


def test_flat_yfinance_columns_are_accepted():
    frame = _yfinance_frame(["AAPL"], date(2021, 1, 1), date(2021, 2, 1)).droplevel(1, axis=1)
    flat = yahoo.from_yfinance_frame(frame, "AAPL")
    assert flat.columns == ["date", "open", "high", "low", "close", "adj_close", "volume"]
    assert len(flat) == 19


def _csv_with(tmp_path, ticker: str, edit) -> CsvDirectorySource:
    """KO's real CSV with ``edit`` applied to its lines, as ``{ticker}.csv`` in a folder of its own."""
    lines = (YAHOO_DIR / "KO.csv").read_text().splitlines()
    (tmp_path / f"{ticker}.csv").write_text("\n".join(edit(lines)) + "\n")
    return CsvDirectorySource(tmp_path)


def test_days_without_prices_or_volume_are_dropped_and_logged_with_their_dates(tmp_path, caplog):
    whole = CsvDirectorySource(YAHOO_DIR).load("KO", START, END)
    no_prices, no_volume = str(whole["date"][100]), str(whole["date"][200])

    def edit(lines):
        out = []
        for ln in lines:
            if ln.startswith(no_prices):
                ln = f"{no_prices},null,null,null,null,null,0"
            elif ln.startswith(no_volume):
                ln = ln.rsplit(",", 1)[0] + ",null"
            out.append(ln)
        return out
    with caplog.at_level("WARNING", logger=yahoo.__name__):
        out = _csv_with(tmp_path, "KO", edit).load("KO", START, END)
    assert_frame_equal(out, whole.filter(~pl.col("date").cast(pl.String).is_in([no_prices, no_volume])))
    assert f"dropped 1 day(s) Yahoo gives no prices for: {no_prices}" in caplog.text
    assert f"dropped 1 day(s) Yahoo gives prices but no volume for: {no_volume}" in caplog.text and "KO.csv" in caplog.text


def test_a_row_missing_some_prices_is_refused_naming_its_date(tmp_path):
    def blank_adj_close(lines):
        f = lines[5].split(",")
        f[5] = ""
        return lines[:5] + [",".join(f)] + lines[6:]
    day = (YAHOO_DIR / "KO.csv").read_text().splitlines()[5].split(",")[0]
    with pytest.raises(YahooSourceError, match=rf"KO: .*KO\.csv: 1 row\(s\) with some prices missing, the first on {day}"):
        _csv_with(tmp_path, "KO", blank_adj_close).load("KO", START, END)


def test_dates_are_the_exchange_dates_and_must_be_iso(tmp_path):
    # an offset keeps its own calendar day (in UTC this would be the day before)
    src = _csv_with(tmp_path, "KO", lambda ls: [ls[0]] + [ln.replace(",", " 00:00:00+09:00,", 1) for ln in ls[1:]])
    assert_frame_equal(src.load("KO", START, END), CsvDirectorySource(YAHOO_DIR).load("KO", START, END))
    us = _csv_with(tmp_path, "US", lambda ls: [ls[0], "01/02/2020" + ls[1][10:], *ls[2:]])
    with pytest.raises(YahooSourceError, match=r"US: .*US\.csv: 1 row\(s\) without a YYYY-MM-DD date, the first "
                                               r"'01/02/2020' \(data row 1\)"):
        us.load("US", START, END)


def test_a_non_numeric_volume_names_the_file(tmp_path):
    src = _csv_with(tmp_path, "KO", lambda ls: [ls[0], ls[1].rsplit(",", 1)[0] + ",n/a", *ls[2:]])
    with pytest.raises(YahooSourceError, match=r"KO: .*KO\.csv: a column is not numeric: .*'volume'"):
        src.load("KO", START, END)


def test_a_yfinance_answer_without_one_priced_row_is_an_error(monkeypatch):
    frame = _yfinance_frame(["KO"], date(2020, 1, 1), date(2020, 2, 1)) * float("nan")
    monkeypatch.setattr("yfinance.download", lambda *a, **k: frame)
    with pytest.raises(YahooSourceError, match=r"KO: yfinance returned no priced rows between 2020-01-01 and 2020-01-31"):
        YFinanceSource(backoff=0).load("KO", date(2020, 1, 1), date(2020, 1, 31))
