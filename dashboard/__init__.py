"""The Streamlit dashboard: `streamlit run dashboard/app.py`."""

__all__: list[str] = []
