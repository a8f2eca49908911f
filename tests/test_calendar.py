"""Due dates in business days on Brazil's calendar, for 2026 and 2027."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.settings import Settings
from engine.calendar import BusinessCalendar, add_business_days, calendar_from_settings
from engine.errors import CalendarError

BRAZIL = BusinessCalendar()


class TestWeekends:
    def test_friday_plus_one_is_monday(self) -> None:
        assert BRAZIL.add_business_days(date(2026, 3, 6), 1) == date(2026, 3, 9)

    def test_saturday_plus_zero_and_plus_one_are_monday(self) -> None:
        assert BRAZIL.add_business_days(date(2026, 3, 7), 0) == date(2026, 3, 9)
        assert BRAZIL.add_business_days(date(2026, 3, 7), 1) == date(2026, 3, 9)

    def test_zero_days_on_a_business_day_is_that_day(self) -> None:
        assert BRAZIL.add_business_days(date(2026, 3, 4), 0) == date(2026, 3, 4)

    def test_ten_days_span_two_weekends(self) -> None:
        assert BRAZIL.add_business_days(date(2026, 3, 2), 10) == date(2026, 3, 16)


class TestHolidays2026:
    def test_carnival_monday_and_tuesday_are_closed(self) -> None:
        assert BRAZIL.add_business_days(date(2026, 2, 13), 1) == date(2026, 2, 18)

    def test_ash_wednesday_is_open(self) -> None:
        assert BRAZIL.is_business_day(date(2026, 2, 18))

    def test_five_days_across_carnival(self) -> None:
        assert BRAZIL.add_business_days(date(2026, 2, 12), 5) == date(2026, 2, 23)

    def test_good_friday(self) -> None:
        assert BRAZIL.add_business_days(date(2026, 4, 2), 1) == date(2026, 4, 6)

    def test_tiradentes(self) -> None:
        assert BRAZIL.add_business_days(date(2026, 4, 20), 1) == date(2026, 4, 22)

    def test_corpus_christi(self) -> None:
        assert BRAZIL.add_business_days(date(2026, 6, 3), 1) == date(2026, 6, 5)

    def test_christmas(self) -> None:
        assert BRAZIL.add_business_days(date(2026, 12, 24), 1) == date(2026, 12, 28)

    def test_christmas_eve_is_open_unless_configured(self) -> None:
        assert BRAZIL.is_business_day(date(2026, 12, 24))

    def test_zero_days_on_a_holiday_is_the_next_business_day(self) -> None:
        assert BRAZIL.add_business_days(date(2026, 4, 21), 0) == date(2026, 4, 22)
        assert BRAZIL.add_business_days(date(2026, 2, 16), 0) == date(2026, 2, 18)
        assert BRAZIL.add_business_days(date(2026, 4, 3), 0) == date(2026, 4, 6)

    def test_new_year_across_the_year_boundary(self) -> None:
        assert BRAZIL.add_business_days(date(2026, 12, 31), 1) == date(2027, 1, 4)

    def test_the_closed_dates_of_the_year(self) -> None:
        assert sorted(BRAZIL.holidays_of(2026)) == [
            date(2026, 1, 1),
            date(2026, 2, 16),
            date(2026, 2, 17),
            date(2026, 4, 3),
            date(2026, 4, 21),
            date(2026, 5, 1),
            date(2026, 6, 4),
            date(2026, 9, 7),
            date(2026, 10, 12),
            date(2026, 11, 2),
            date(2026, 11, 15),
            date(2026, 11, 20),
            date(2026, 12, 25),
        ]


class TestHolidays2027:
    def test_carnival(self) -> None:
        assert BRAZIL.add_business_days(date(2027, 2, 5), 1) == date(2027, 2, 10)

    def test_good_friday(self) -> None:
        assert BRAZIL.add_business_days(date(2027, 3, 25), 1) == date(2027, 3, 29)

    def test_tiradentes(self) -> None:
        assert BRAZIL.add_business_days(date(2027, 4, 20), 1) == date(2027, 4, 22)

    def test_corpus_christi(self) -> None:
        assert BRAZIL.add_business_days(date(2027, 5, 26), 1) == date(2027, 5, 28)

    def test_christmas_on_a_saturday(self) -> None:
        assert BRAZIL.add_business_days(date(2027, 12, 24), 1) == date(2027, 12, 27)


class TestConfiguredCalendars:
    def test_extra_closed_date(self) -> None:
        company = BusinessCalendar(closed_dates=[date(2026, 12, 24)])

        assert company.add_business_days(date(2026, 12, 23), 1) == date(2026, 12, 28)
        assert company.add_business_days(date(2026, 12, 24), 0) == date(2026, 12, 28)

    def test_state_holiday_sao_paulo_9_de_julho(self) -> None:
        sao_paulo = BusinessCalendar(subdivision="SP")

        assert sao_paulo.add_business_days(date(2026, 7, 8), 1) == date(2026, 7, 10)
        assert BRAZIL.add_business_days(date(2026, 7, 8), 1) == date(2026, 7, 9)

    def test_state_code_in_lower_case(self) -> None:
        assert BusinessCalendar(subdivision="sp").subdivision == "SP"

    def test_city_holiday_sao_paulo_anniversary(self) -> None:
        city = BusinessCalendar(subdivision="São Paulo Capital")

        assert city.add_business_days(date(2027, 1, 25), 0) == date(2027, 1, 26)
        assert BRAZIL.add_business_days(date(2027, 1, 25), 0) == date(2027, 1, 25)

    def test_from_settings(self) -> None:
        settings = Settings(engine={"holiday_subdivision": "RJ", "closed_dates": ["2026-11-19"]})

        calendar = calendar_from_settings(settings)

        assert calendar.subdivision == "RJ"
        assert calendar.add_business_days(date(2026, 11, 18), 1) == date(2026, 11, 23)
        # Rio de Janeiro closes on 23 April (São Jorge); the country does not.
        assert calendar.add_business_days(date(2026, 4, 22), 1) == date(2026, 4, 24)

    def test_unknown_subdivision_is_refused(self) -> None:
        with pytest.raises(CalendarError) as raised:
            BusinessCalendar(subdivision="XX")

        assert str(raised.value) == (
            "subdivisão desconhecida (unknown subdivision) para BR: XX "
            "(use a sigla do estado, ex. SP, ou 'São Paulo Capital')"
        )

    def test_unknown_country_is_refused(self) -> None:
        with pytest.raises(CalendarError, match="country not supported"):
            BusinessCalendar(country="ZZ")

    def test_negative_days_are_refused(self) -> None:
        with pytest.raises(CalendarError, match="business days must be >= 0"):
            BRAZIL.add_business_days(date(2026, 3, 2), -1)

    def test_holidays_are_computed_once_per_year(self) -> None:
        calendar = BusinessCalendar()

        assert calendar.holidays_of(2026) is calendar.holidays_of(2026)

    def test_module_function_uses_brazil_by_default(self) -> None:
        assert add_business_days(date(2026, 2, 13), 1) == date(2026, 2, 18)


@given(
    start=st.dates(min_value=date(2024, 1, 1), max_value=date(2030, 12, 31)),
    n=st.integers(min_value=0, max_value=40),
)
def test_due_date_is_n_business_days_after_start(start: date, n: int) -> None:
    due = BRAZIL.add_business_days(start, n)

    assert BRAZIL.is_business_day(due)
    between = [start + timedelta(days=i) for i in range(1, (due - start).days + 1)]
    counted = sum(BRAZIL.is_business_day(day) for day in between)
    assert counted == (n if n > 0 else int(due != start))
