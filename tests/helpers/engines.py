"""Other engines reading our Delta tables, as the platform teams that query them do: DuckDB's delta_scan,
Polars' read_delta and deltalake itself. Each returns a DataFrame sorted by key."""

from __future__ import annotations

from urllib.parse import urlparse

import pandas as pd


def with_deltalake(uri: str, s3_endpoint: str | None = None) -> pd.DataFrame:
    from deltalake import DeltaTable

    return _sorted(DeltaTable(uri, storage_options=_delta_options(s3_endpoint)).to_pandas())


def with_polars(uri: str, s3_endpoint: str | None = None) -> pd.DataFrame:
    import polars as pl

    return _sorted(pl.read_delta(uri, storage_options=_delta_options(s3_endpoint) or None).to_pandas())


def with_duckdb(uri: str, s3_endpoint: str | None = None) -> pd.DataFrame:
    import duckdb
    from duckdb_extensions import import_extension

    con = duckdb.connect()
    for name in ("httpfs", "delta"):  # from their wheels: nothing is downloaded
        import_extension(name, con=con)
        con.execute(f"LOAD {name}")
    if s3_endpoint:
        host = urlparse(s3_endpoint).netloc
        con.execute(f"CREATE SECRET (TYPE s3, KEY_ID 'testing', SECRET 'testing', REGION 'us-east-1', "
                    f"ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false)")
    return _sorted(con.execute("SELECT * FROM delta_scan(?)", [uri]).df())


ENGINES = {"deltalake": with_deltalake, "polars": with_polars, "duckdb": with_duckdb}


def _delta_options(s3_endpoint: str | None) -> dict[str, str]:
    if not s3_endpoint:
        return {}
    return {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("key").reset_index(drop=True)
