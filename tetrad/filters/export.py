"""What the daemon applies to every event before its exporters (Tetragon's
export flags): redaction of arguments (which every consumer sees, API
clients included), then for the export only: --export-allowlist /
--export-denylist, --field-filters and --export-rate-limit."""

from __future__ import annotations

import json

from ..config import ConfigError, parse_duration
from .fields import apply_all, parse_field_filters
from .jsonlines import FilterError
from .match import FilterList, passes
from .ratelimit import RateLimiter
from .redaction import Redactor


class ExportControls:
    def __init__(self, cfg):
        try:
            self.allow = FilterList.parse(cfg.export_allowlist, "--export-allowlist")
            self.deny = FilterList.parse(cfg.export_denylist, "--export-denylist")
            self.field_filters = parse_field_filters(cfg.field_filters, "--field-filters")
            self.redactor = Redactor.parse(cfg.redaction_filters, "--redaction-filters")
        except FilterError as e:
            raise ConfigError(str(e)) from None
        self.limiter = None
        if cfg.export_rate_limit >= 0:
            self.limiter = RateLimiter(cfg.export_rate_limit, parse_duration(cfg.export_rate_limit_interval))
        self.filtered_out = 0

    def summary(self) -> str:
        parts = [f"{len(self.allow)} allow filters", f"{len(self.deny)} deny filters",
                 f"{len(self.field_filters)} field filters", f"{len(self.redactor.filters)} redaction filters"]
        if self.limiter is not None:
            parts.append(f"rate limit {int(self.limiter.capacity)} events per {self.limiter.interval_s:g}s")
        return ", ".join(parts)

    def redact(self, event: dict, line: str) -> str:
        """Redact in place; the JSON line to use from now on."""
        if self.redactor and self.redactor.apply(event):
            return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        return line

    def select(self, event: dict, line: str) -> str | None:
        """The line to export, or None when filtered out or rate-limited."""
        if not passes(self.allow, self.deny, event):
            self.filtered_out += 1
            return None
        if self.field_filters:
            line = json.dumps(apply_all(self.field_filters, event), separators=(",", ":"), ensure_ascii=False)
        if self.limiter is not None and not self.limiter.allow():
            return None
        return line

    @property
    def rate_limit_dropped(self) -> int:
        return self.limiter.dropped_total if self.limiter is not None else 0

    def rate_limit_report(self) -> int:
        """Events dropped by the rate limit since the last report, once per interval."""
        return self.limiter.take_report() if self.limiter is not None else 0

    def stats(self) -> dict:
        return {"filtered_out": self.filtered_out, "rate_limit_dropped": self.rate_limit_dropped}
