"""The business calendar: which days count when a playbook task is due in N business days.

A day is closed when it is a Saturday or Sunday, a public holiday of the country
(and of the optional state or city subdivision), a customary day off, or one of
the extra dates in the configuration.

Customary days off: the ``holidays`` package files Brazil's Carnival (Monday and
Tuesday) and Corpus Christi under its ``optional`` category ("ponto
facultativo"), alongside days most companies do work (Ash Wednesday morning,
Public Servant's Day, Christmas and New Year's Eves). Brazilian businesses close
on Carnival and Corpus Christi, so this calendar closes exactly those, plus Good
Friday (public in the package, listed here so it never depends on that). They are
computed from Easter rather than picked from the package by name, because names
change with the package's language and version.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import holidays
from dateutil.easter import easter

from config.settings import Settings
from engine.errors import CalendarError

log = logging.getLogger(__name__)

# Days off counted from Easter Sunday, by country; only Brazil's are known.
CUSTOMARY_DAYS_OFF: dict[str, dict[str, int]] = {
    "BR": {
        "Carnaval (segunda-feira)": -48,
        "Carnaval (terça-feira)": -47,
        "Sexta-feira Santa": -2,
        "Corpus Christi": 60,
    },
}

# A step that can never reach a business day would loop forever; a year of
# closed days in a row means the calendar is misconfigured.
_MAX_CLOSED_RUN = 366


class BusinessCalendar:
    """Business days of one country (and subdivision), with extra closed dates."""

    def __init__(
        self,
        country: str = "BR",
        subdivision: str | None = None,
        closed_dates: Iterable[date] = (),
    ) -> None:
        self.country = country.upper()
        # State codes are upper case in the package ("SP"); city names keep their case.
        if subdivision and len(subdivision) <= 3:
            subdivision = subdivision.upper()
        self.subdivision = subdivision or None
        self.closed_dates = frozenset(closed_dates)
        # Built with no years, only to fail early on an unknown country or subdivision.
        try:
            holidays.country_holidays(self.country, years=())
        except NotImplementedError as exc:
            raise CalendarError(
                f"país sem calendário de feriados (country not supported): {country}"
            ) from exc
        try:
            holidays.country_holidays(self.country, subdiv=self.subdivision, years=())
        except NotImplementedError as exc:
            raise CalendarError(
                f"subdivisão desconhecida (unknown subdivision) para {self.country}: "
                f"{subdivision} (use a sigla do estado, ex. SP, ou 'São Paulo Capital')"
            ) from exc
        self._closed_by_year: dict[int, frozenset[date]] = {}

    def __repr__(self) -> str:
        return (
            f"BusinessCalendar(country={self.country!r}, subdivision={self.subdivision!r}, "
            f"closed_dates={len(self.closed_dates)})"
        )

    def holidays_of(self, year: int) -> frozenset[date]:
        """Every weekday-independent closed date of the year (cached per year)."""
        cached = self._closed_by_year.get(year)
        if cached is not None:
            return cached
        public = holidays.country_holidays(
            self.country, subdiv=self.subdivision, years=year, categories=("public",)
        )
        easter_sunday = easter(year)
        customary = {
            easter_sunday + timedelta(days=offset)
            for offset in CUSTOMARY_DAYS_OFF.get(self.country, {}).values()
        }
        extra = {d for d in self.closed_dates if d.year == year}
        closed = frozenset(set(public) | customary | extra)
        self._closed_by_year[year] = closed
        log.debug("%s/%s %s: %s closed dates", self.country, self.subdivision, year, len(closed))
        return closed

    def is_business_day(self, day: date) -> bool:
        return day.weekday() < 5 and day not in self.holidays_of(day.year)

    def next_business_day(self, day: date) -> date:
        """The day itself when it is a business day, else the first one after it."""
        for _ in range(_MAX_CLOSED_RUN):
            if self.is_business_day(day):
                return day
            day += timedelta(days=1)
        raise CalendarError(
            f"nenhum dia útil em um ano a partir de {day} (no business day within a year)"
        )

    def add_business_days(self, start: date, n: int) -> date:
        """``n`` business days after ``start``; with 0, ``start`` or the next business day.

        Counting starts the day after ``start``, whether ``start`` is open or not: a
        task due in 1 business day from a Saturday falls on Monday when Monday is open.
        """
        if n < 0:
            raise CalendarError(f"dias úteis devem ser >= 0 (business days must be >= 0): {n}")
        if n == 0:
            return self.next_business_day(start)
        day = start
        for _ in range(n):
            day = self.next_business_day(day + timedelta(days=1))
        return day


def calendar_from_settings(settings: Settings) -> BusinessCalendar:
    """The calendar configured in ``[engine]``."""
    engine = settings.engine
    return BusinessCalendar(
        country=engine.holiday_country,
        subdivision=engine.holiday_subdivision,
        closed_dates=engine.closed_dates,
    )


def today_for(settings: Settings, now: datetime | None = None) -> date:
    """Today's date in the configured time zone: what "today" means for due dates."""
    zone = ZoneInfo(settings.engine.timezone)
    return (now or datetime.now(zone)).astimezone(zone).date()


def add_business_days(start: date, n: int, calendar: BusinessCalendar | None = None) -> date:
    """``n`` business days after ``start`` on ``calendar`` (Brazil's national one by default)."""
    return (calendar or _default_calendar()).add_business_days(start, n)


@functools.cache
def _default_calendar() -> BusinessCalendar:
    return BusinessCalendar()
