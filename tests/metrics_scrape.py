"""Reading /metrics as Prometheus would: every sample of a scrape by name and labels, to compare two scrapes."""

from prometheus_client.parser import text_string_to_metric_families


class Scrape(dict):
    """{(sample name, frozenset of label items): value} of one scrape."""

    @classmethod
    def parse(cls, text: str) -> "Scrape":
        return cls(
            ((sample.name, frozenset(sample.labels.items())), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        )

    def value(self, name: str, **labels: str) -> float:
        """The sample's value, 0 when the scrape has no such sample (a counter not incremented yet)."""
        return self.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self
