"""The locust load shape of the peak rehearsal.

``RehearsalShape`` is the one ``LoadTestShape`` the locustfile exposes: it follows the rate profile
named by ``--load-shape`` (``holiday-peak`` or ``steady``, see ``rate_profile.py``), scaled by
``--base-rate`` and stretched over ``--peak-duration`` seconds, and sets the number of users;
each user paces itself so that all of them together publish the profile's rate (``target_rate``).
The run stops when the profile ends.
"""

from __future__ import annotations

import math

from locust import LoadTestShape

from router.loadtest.rate_profile import PROFILES, RateProfile, make_profile

__all__ = ["PROFILES", "RehearsalShape", "target_rate"]


def target_rate(environment: object) -> float:
    """The rate the shape wants now (set on the environment by ``RehearsalShape.tick``)."""
    return getattr(environment, "rehearsal_target_rate", 0.0)


class RehearsalShape(LoadTestShape):
    """The profile chosen by ``--load-shape``; stops the run when the profile ends."""

    def __init__(self) -> None:
        super().__init__()
        self._profile: RateProfile | None = None

    def profile(self) -> RateProfile:
        if self._profile is None:
            assert self.runner is not None
            opts = self.runner.environment.parsed_options
            self._profile = make_profile(opts.load_shape, opts.base_rate, opts.peak_duration)
        return self._profile

    def tick(self) -> tuple[int, float] | None:
        profile = self.profile()
        t = self.get_run_time()
        if t > profile.duration:
            return None
        rate = profile.rate(t)
        env = self.runner.environment  # type: ignore[union-attr]
        env.rehearsal_target_rate = rate  # users pace themselves to share it
        per_user = env.parsed_options.per_user_rate
        users = max(1, math.ceil(rate / per_user))
        return users, max(users, 100)  # spawn at once: the profile, not the spawn rate, shapes the load
