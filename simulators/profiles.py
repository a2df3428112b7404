"""The five flight profiles, named after Ingenuity's first flights (ICD section 1).

A profile is data: the ground phases around the flight, the manoeuvres flown, where the
rover is parked, and the starting battery and temperatures. `groundstation.simulators.physics`
turns it into time series. Distances are in the local frame of ICD section 4 (x east,
y north, z up, origin at the takeoff airfield); headings are yaw angles about z up,
0 = east, counter-clockwise positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


@dataclass(frozen=True, kw_only=True)
class Climb:
    """Vertical move to `altitude_m` above the takeoff airfield (z), from the ground or a hover."""

    altitude_m: float
    speed_mps: float = 1.0
    accel_mps2: float = 0.5


@dataclass(frozen=True, kw_only=True)
class Translate:
    """Horizontal move by (`east_m`, `north_m`) at constant altitude, cruising at `speed_mps`."""

    east_m: float
    north_m: float
    speed_mps: float
    accel_mps2: float = 0.6


@dataclass(frozen=True, kw_only=True)
class Hover:
    """Hold position for `duration_s`, turning by `yaw_deg` meanwhile (photos, checks)."""

    duration_s: float
    yaw_deg: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Land:
    """Descend to the ground below the current position and touch down."""

    speed_mps: float = 1.0
    accel_mps2: float = 0.5


Move = Climb | Translate | Hover | Land


@dataclass(frozen=True, kw_only=True)
class FlightProfile:
    """One flight as an operator plans it: ground phases, manoeuvres, the parked rover."""

    name: str
    title: str
    moves: tuple[Move, ...]
    initial_yaw_deg: float = 90.0  # nose north, the direction of the first flights
    idle_s: float = 8.0
    preflight_s: float = 20.0
    spinup_s: float = 12.0
    hold_at_speed_s: float = 2.0  # full rpm on the ground before the takeoff command
    spindown_s: float = 8.0
    landed_s: float = 20.0  # after touchdown, spin-down included
    rover_east_m: float = -40.0
    rover_north_m: float = -50.0
    rover_heading_deg: float = 135.0  # compass: 0 north, clockwise (ICD section 4)
    rover_odometry_m: float = 180.0
    initial_soc: float = 0.92
    battery_temp_c: float = 3.5  # below the heater threshold: it starts on
    avionics_temp_c: float = -4.0
    ambient_temp_c: float = -25.0


# Flight 1 (19 April 2021): climb to 3 m, hover, turn, land; 39.1 s in the air.
FLIGHT1: Final = FlightProfile(
    name="flight1",
    title="flight 1: hover at 3 m",
    moves=(
        Climb(altitude_m=3.0),
        Hover(duration_s=8.0),
        Hover(duration_s=12.0, yaw_deg=96.0),
        Hover(duration_s=7.0),
        Land(),
    ),
    rover_east_m=-52.0,
    rover_north_m=-38.0,
)

# Flight 2 (22 April 2021): 5 m, 2 m to the west and back, turns; 51.9 s in the air.
FLIGHT2: Final = FlightProfile(
    name="flight2",
    title="flight 2: 5 m altitude, 2 m west and back",
    moves=(
        Climb(altitude_m=5.0),
        Hover(duration_s=3.0),
        Translate(east_m=-2.0, north_m=0.0, speed_mps=0.5),
        Hover(duration_s=8.0, yaw_deg=-90.0),
        Hover(duration_s=8.0, yaw_deg=90.0),
        Translate(east_m=2.0, north_m=0.0, speed_mps=0.5),
        Hover(duration_s=3.0),
        Land(),
    ),
    rover_east_m=-52.0,
    rover_north_m=-38.0,
)

# Flight 3 (25 April 2021, ICD section 1): 5 m, 50 m north at up to 2 m/s and back, ~80 s.
# The rover is parked so that the farthest point, (0, 50, 5), is 85 m from it, as when
# the helicopter photographed it: 35^2 + 77.3^2 + (5 - ground)^2 = 85.0^2 with the
# ground height of `physics.ground_height_m` there (-0.19 m).
FLIGHT3: Final = FlightProfile(
    name="flight3",
    title="flight 3: 5 m altitude, 50 m downrange and back",
    moves=(
        Climb(altitude_m=5.0),
        Hover(duration_s=1.5),
        Translate(east_m=0.0, north_m=50.0, speed_mps=2.0),
        Hover(duration_s=3.0),
        Translate(east_m=0.0, north_m=-50.0, speed_mps=2.0),
        Hover(duration_s=1.5),
        Land(),
    ),
    rover_east_m=35.0,
    rover_north_m=-27.3,
    rover_heading_deg=20.0,
)

# Flight 4 (30 April 2021): 133 m north and back at 3.5 m/s, 5 m, 117 s.
FLIGHT4: Final = FlightProfile(
    name="flight4",
    title="flight 4: 133 m out and back at 3.5 m/s",
    moves=(
        Climb(altitude_m=5.0),
        Hover(duration_s=2.0),
        Translate(east_m=0.0, north_m=133.0, speed_mps=3.5, accel_mps2=0.8),
        Hover(duration_s=8.0),
        Translate(east_m=0.0, north_m=-133.0, speed_mps=3.5, accel_mps2=0.8),
        Hover(duration_s=2.0),
        Land(),
    ),
    rover_east_m=35.0,
    rover_north_m=-27.3,
    rover_heading_deg=20.0,
    initial_soc=0.95,
)

# Flight 5 (7 May 2021): 129 m one way south to a new airfield, climb to 10 m there, 108 s.
FLIGHT5: Final = FlightProfile(
    name="flight5",
    title="flight 5: one way to a new airfield, up to 10 m",
    moves=(
        Climb(altitude_m=5.0),
        Hover(duration_s=1.0),
        Translate(east_m=-20.0, north_m=-127.4, speed_mps=2.0),
        Hover(duration_s=1.0),
        Climb(altitude_m=10.0),
        Hover(duration_s=8.0, yaw_deg=45.0),
        Land(),
    ),
    initial_yaw_deg=-90.0,
    rover_east_m=30.0,
    rover_north_m=-60.0,
    rover_heading_deg=250.0,
    initial_soc=0.94,
)

PROFILES: Final = MappingProxyType(
    {profile.name: profile for profile in (FLIGHT1, FLIGHT2, FLIGHT3, FLIGHT4, FLIGHT5)}
)


def profile_names() -> tuple[str, ...]:
    """The profile names the CLI accepts, in flight order."""
    return tuple(PROFILES)
