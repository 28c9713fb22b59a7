"""The Monitor: the detection plane. Turns what happens to containers into health alerts."""

__all__: list[str] = []
