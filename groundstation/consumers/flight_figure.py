"""One page per flight for people: ground track and the health and link series (ICD section 8).

Needs matplotlib (`pip install '.[report]'`). Figures are built with the object API on
the Agg canvas, never pyplot: no global figure state, no display needed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray

from groundstation.consumers.flights import Event, FlightView

__all__ = ["FIGURE_FORMATS", "PANEL_TITLES", "draw_flight", "save_figure"]

FigureFormat = Literal["png", "pdf"]
FIGURE_FORMATS: Final = ("png", "pdf")
PANEL_TITLES: Final = (
    "Ground track (local frame)",
    "Altitude",
    "Ground speed",
    "Battery",
    "Rotor speed",
    "Temperatures",
    "Link",
    "Vibration RMS",
    "Modes and event reports",
)
"""The panels, in reading order; each is one Axes (battery and link add a right-hand axis)."""

PAGE_INCHES: Final = (16.5, 11.7)  # A3 landscape: readable on a screen and on paper
PNG_DPI: Final = 110
SEVERITY_COLOURS: Final = {
    "DEBUG": "tab:gray",
    "INFO": "tab:blue",
    "WARNING": "tab:orange",
    "ERROR": "tab:red",
    "FATAL": "darkred",
}
MODE_COLOUR: Final = "0.6"


def _utc(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _figure(value: object, unit: str, digits: int = 1) -> str:
    return "n/a" if not isinstance(value, int | float) else f"{value:.{digits}f} {unit}"


def _header(view: FlightView) -> str:
    summary = view.summary
    packets = summary["packets"]
    bad = ", ".join(f"{name} {count}" for name, count in packets.items() if name != "ok" and count)
    landing = "" if view.flight.landing_time is not None else "  (no landing in the archive)"
    return (
        f"duration {_figure(summary['duration_s'], 's')}   "
        f"max altitude {_figure(summary['max_altitude_m'], 'm', 2)}   "
        f"path {_figure(summary['path_m'], 'm')}   "
        f"max range to rover {_figure(summary['max_range_to_rover_m'], 'm')}   "
        f"max ground speed {_figure(summary['max_ground_speed_mps'], 'm/s', 2)}   "
        f"battery {_figure(summary['battery_soc_start'], '%', 0)} -> "
        f"{_figure(summary['battery_soc_end'], '%', 0)}\n"
        f"packets ok {packets['ok']}" + (f" ({bad})" if bad else "") + f"   lost {summary['lost']}"
        f"{landing}"
    )


def draw_flight(view: FlightView, *, vehicle: str) -> Figure:
    """The flight's page: ground track on the left, time series against seconds from takeoff."""
    figure = Figure(figsize=PAGE_INCHES, layout="constrained")
    FigureCanvasAgg(figure)
    flight = view.flight
    figure.suptitle(
        f"{vehicle} flight {flight.number}: takeoff {_utc(flight.takeoff_time)}\n{_header(view)}",
        fontsize=12,
    )
    grid = figure.add_gridspec(4, 3, width_ratios=(1.15, 1, 1))
    track = figure.add_subplot(grid[:, 0])
    panels = [figure.add_subplot(grid[row, col]) for row in range(4) for col in (1, 2)]
    for axes in panels[1:]:
        axes.sharex(panels[0])
    altitude, speed, battery, rotors, temperatures, link, vibration, events = panels

    t0 = flight.takeoff_time

    def rel(times: NDArray[np.float64]) -> NDArray[np.float64]:
        return times - t0

    _draw_track(track, view)
    nav, hk = view.nav, view.hk
    altitude.plot(rel(nav.time), nav.fields["lidar_alt"], label="lidar")
    altitude.plot(rel(nav.time), nav.fields["pos_z"], label="nav z", linestyle="--")
    altitude.set_ylabel("m")
    speed.plot(rel(nav.time), view.ground_speed, color="tab:green")
    speed.set_ylabel("m/s")
    battery.plot(rel(hk.time), hk.fields["battery_voltage"], color="tab:purple", label="voltage")
    battery.set_ylabel("V")
    charge = battery.twinx()
    charge.plot(rel(hk.time), hk.fields["battery_soc"], color="tab:olive", label="charge")
    charge.set_ylabel("state of charge, %")
    _legend(battery, charge)
    rotors.plot(rel(hk.time), hk.fields["rotor_rpm_upper"], label="upper")
    rotors.plot(rel(hk.time), hk.fields["rotor_rpm_lower"], label="lower", linestyle="--")
    rotors.set_ylabel("rpm")
    temperatures.plot(rel(hk.time), hk.fields["battery_temp"], label="battery")
    temperatures.plot(rel(hk.time), hk.fields["avionics_temp"], label="avionics")
    temperatures.set_ylabel("°C")
    link.plot(rel(hk.time), hk.fields["link_rssi"], label="RSSI helicopter")
    link.plot(rel(view.link.time), view.link.fields["hbs_rssi"], label="RSSI rover")
    link.set_ylabel("dBm")
    quality = link.twinx()
    quality.plot(
        rel(view.link.time), view.link.fields["link_quality"], color="tab:gray", label="quality"
    )
    quality.set_ylabel("quality, %")
    quality.set_ylim(0, 105)
    _legend(link, quality)
    for axis in "xyz":
        vibration.plot(rel(view.vibration.time), view.vibration.fields[axis], label=axis)
    vibration.set_ylabel("m/s²")
    _draw_events(events, view.events, t0)

    time_panels = (altitude, speed, battery, rotors, temperatures, link, vibration, events)
    for axes, title in zip((track, *time_panels), PANEL_TITLES, strict=True):
        axes.set_title(title, loc="left", fontsize=10)
    for axes in time_panels:
        axes.grid(True, alpha=0.3)
        _mark_modes(axes, view.events, t0)
    for axes in (altitude, rotors, temperatures, vibration):
        axes.legend(loc="upper right", fontsize=8)
    for axes in (vibration, events):
        axes.set_xlabel("seconds from takeoff")
    return figure


def _legend(left: Axes, right: Axes) -> None:
    handles, labels = left.get_legend_handles_labels()
    more_handles, more_labels = right.get_legend_handles_labels()
    left.legend(handles + more_handles, labels + more_labels, loc="best", fontsize=8)


def _draw_track(axes: Axes, view: FlightView) -> None:
    track = view.track
    axes.plot(track.fields["pos_x"], track.fields["pos_y"], color="tab:blue", label="helicopter")
    if len(track):
        axes.plot(
            [track.fields["pos_x"][0]], [track.fields["pos_y"][0]], "o", color="tab:blue", ms=6
        )
    if view.rover_position is not None:
        rx, ry = view.rover_position
        axes.plot([rx], [ry], "s", color="tab:red", ms=9, label="rover")
        if view.farthest is not None:
            fx, fy, distance = view.farthest
            axes.plot([rx, fx], [ry, fy], ":", color="tab:red")
            axes.plot([fx], [fy], "*", color="tab:orange", ms=14, label="farthest from rover")
            axes.annotate(
                f"{distance:.1f} m",
                ((rx + fx) / 2, (ry + fy) / 2),
                color="tab:red",
                fontsize=10,
                ha="center",
            )
    axes.set_aspect("equal", adjustable="datalim")
    axes.set_xlabel("x, east (m)")
    axes.set_ylabel("y, north (m)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize=8)


def _draw_events(axes: Axes, events: Sequence[Event], t0: float) -> None:
    """Event reports as dots by severity, one row per severity; mode names along the top."""
    severities = list(SEVERITY_COLOURS)
    for event in events:
        if event.kind == "mode":
            axes.annotate(
                event.text,
                (event.time - t0, 1.0),
                xycoords=("data", "axes fraction"),
                rotation=90,
                va="top",
                fontsize=7,
                color="0.3",
            )
            continue
        row = severities.index(event.kind) if event.kind in severities else len(severities)
        axes.plot(
            [event.time - t0], [row], "o", color=SEVERITY_COLOURS.get(event.kind, "black"), ms=6
        )
    axes.set_yticks(range(len(severities)), severities, fontsize=7)
    axes.set_ylim(-0.5, len(severities) + 2.5)


def _mark_modes(axes: Axes, events: Sequence[Event], t0: float) -> None:
    for event in events:
        if event.kind == "mode":
            axes.axvline(event.time - t0, color=MODE_COLOUR, linewidth=0.8, linestyle=":")


def save_figure(figure: Figure, path: Path, *, fmt: FigureFormat) -> Path:
    """Write the page as PNG or PDF (one page)."""
    figure.savefig(path, format=fmt, dpi=PNG_DPI)
    return path
