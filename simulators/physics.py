"""Flight physics: a profile becomes consistent time series of the helicopter's state.

Pure numpy, no packets: positions are the closed-form integral of the velocities (smooth
cosine-ramp speed profiles), attitude is the tilt that produces the commanded acceleration
on Mars, the battery is drained by the power drawn and the temperatures follow a
one-node thermal model with a hysteresis heater. Times are seconds since the start of the
profile (the IDLE phase); `groundstation.simulators.telemetry` samples these series at packet times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from groundstation.simulators.profiles import Climb, FlightProfile, Hover, Land, Translate
from numpy.typing import NDArray

Floats = NDArray[np.float64]

G_MARS_MPS2: Final = 3.721
ROTOR_RPM: Final = 2537.0  # ICD section 1: rotor speed in flight
ROTOR_BLADES: Final = 2  # per rotor: the vibration has 1/rev and blade-pass (2/rev) lines

# Modes of HELI_HK (ICD section 4).
IDLE: Final = 0
PREFLIGHT: Final = 1
SPINUP: Final = 2
FLIGHT: Final = 3
LANDED: Final = 4

# Battery: six Li-ion cells in series, 2 Ah; open-circuit voltage linear in the charge.
CELLS: Final = 6
CAPACITY_C: Final = 2.0 * 3600.0
CELL_EMPTY_V: Final = 3.45
CELL_SPAN_V: Final = 0.75
PACK_RESISTANCE_OHM: Final = 0.12
AVIONICS_W: Final = 12.0
HEATER_W: Final = 15.0
HOVER_W: Final = 360.0
GROUND_SPIN_FRACTION: Final = 0.3  # flat collective at full rpm on the ground
HEATER_ON_BELOW_C: Final = 5.0
HEATER_OFF_ABOVE_C: Final = 7.0

# One-node thermal models: heat capacity (J/K) and conductance to ambient (W/K).
BATTERY_HEAT_J_PER_K: Final = 300.0
BATTERY_LOSS_W_PER_K: Final = 0.2
AVIONICS_HEAT_J_PER_K: Final = 400.0
AVIONICS_LOSS_W_PER_K: Final = 0.4
MOTOR_DRIVE_HEAT_FRACTION: Final = 0.08  # of rotor power, warming the avionics

SLOW_STEP_S: Final = 0.1  # grid of the battery and thermal integration


def ground_height_m(east: Floats, north: Floats) -> Floats:
    """Terrain height in the local frame: gentle undulation, zero along both axes."""
    return np.asarray(0.25 * np.sin(east / 23.0) * np.sin(north / 31.0), dtype=np.float64)


def smoothstep(x: Floats) -> Floats:
    """0 -> 1 with zero slope at both ends (rotor spin-up and spin-down)."""
    clipped = np.clip(x, 0.0, 1.0)
    return np.asarray(clipped * clipped * (3.0 - 2.0 * clipped), dtype=np.float64)


@dataclass(frozen=True, kw_only=True)
class Segment:
    """One manoeuvre: a straight move with a cosine-ramp speed profile, or a hover."""

    start_s: float  # since takeoff
    duration_s: float
    origin: tuple[float, float, float]
    direction: tuple[float, float, float]  # unit vector; zero for a hover
    distance_m: float
    cruise_mps: float
    ramp_s: float
    yaw_start: float
    yaw_change: float

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def along(self, t: Floats) -> tuple[Floats, Floats, Floats]:
        """Distance, speed and acceleration along the direction, t since the segment start."""
        v, ramp = self.cruise_mps, self.ramp_s
        if self.distance_m == 0.0 or ramp == 0.0:
            zero = np.zeros_like(t)
            return zero, zero, zero
        cruise_s = self.duration_s - 2.0 * ramp
        peak_accel = v * math.pi / (2.0 * ramp)
        t = np.clip(t, 0.0, self.duration_s)
        u = t - ramp - cruise_s  # time into the deceleration ramp
        accelerating, decelerating = t < ramp, u > 0.0
        s = np.where(
            accelerating,
            0.5 * v * (t - ramp / math.pi * np.sin(math.pi * t / ramp)),
            0.5 * v * ramp + v * (t - ramp),
        )
        s = np.where(
            decelerating, s - 0.5 * v * (u - ramp / math.pi * np.sin(math.pi * u / ramp)), s
        )
        speed = np.where(accelerating, 0.5 * v * (1.0 - np.cos(math.pi * t / ramp)), v)
        speed = np.where(decelerating, 0.5 * v * (1.0 + np.cos(math.pi * u / ramp)), speed)
        accel = np.where(accelerating, peak_accel * np.sin(math.pi * t / ramp), 0.0)
        accel = np.where(decelerating, -peak_accel * np.sin(math.pi * u / ramp), accel)
        return s, speed, accel

    def yaw(self, t: Floats) -> Floats:
        """Heading during the segment: a smooth turn by `yaw_change` over its duration."""
        if self.yaw_change == 0.0:
            return np.full_like(t, self.yaw_start)
        fraction = np.clip(t / self.duration_s, 0.0, 1.0)
        return self.yaw_start + self.yaw_change * 0.5 * (1.0 - np.cos(math.pi * fraction))


def _move_timing(distance: float, speed: float, accel: float) -> tuple[float, float, float]:
    """(cruise speed, ramp time, total time) of a cosine-ramp move; short moves never cruise."""
    ramp = math.pi * speed / (2.0 * accel)
    if speed * ramp > distance:  # the two ramps alone would overshoot: lower the peak
        speed = math.sqrt(2.0 * accel * distance / math.pi)
        ramp = math.pi * speed / (2.0 * accel)
    return speed, ramp, 2.0 * ramp + (distance - speed * ramp) / speed


@dataclass(frozen=True, kw_only=True)
class Kinematics:
    """Helicopter state at sample times (arrays of shape (n,) or (n, 3))."""

    position: Floats
    velocity: Floats
    acceleration: Floats
    roll: Floats
    pitch: Floats
    yaw: Floats


class Trajectory:
    """The airborne part of a flight as segments; evaluated in closed form at any time."""

    def __init__(self, profile: FlightProfile) -> None:
        position = (0.0, 0.0, 0.0)
        yaw = math.radians(profile.initial_yaw_deg)
        segments: list[Segment] = []
        clock = 0.0
        for move in profile.moves:
            x, y, z = position
            if isinstance(move, Hover):
                delta = (0.0, 0.0, 0.0)
                speed, accel = 0.0, 1.0
            elif isinstance(move, Translate):
                delta = (move.east_m, move.north_m, 0.0)
                speed, accel = move.speed_mps, move.accel_mps2
            elif isinstance(move, Climb):
                delta = (0.0, 0.0, move.altitude_m - z)
                speed, accel = move.speed_mps, move.accel_mps2
            else:
                assert isinstance(move, Land)
                ground = float(ground_height_m(np.array(x), np.array(y)))
                delta = (0.0, 0.0, ground - z)
                speed, accel = move.speed_mps, move.accel_mps2
            distance = math.dist((0.0, 0.0, 0.0), delta)
            if distance > 0.0:
                cruise, ramp, duration = _move_timing(distance, speed, accel)
                direction = (delta[0] / distance, delta[1] / distance, delta[2] / distance)
            else:
                cruise, ramp = 0.0, 0.0
                duration = move.duration_s if isinstance(move, Hover) else 0.0
                direction = (0.0, 0.0, 0.0)
            yaw_change = math.radians(move.yaw_deg) if isinstance(move, Hover) else 0.0
            segments.append(
                Segment(
                    start_s=clock,
                    duration_s=duration,
                    origin=position,
                    direction=direction,
                    distance_m=distance,
                    cruise_mps=cruise,
                    ramp_s=ramp,
                    yaw_start=yaw,
                    yaw_change=yaw_change,
                )
            )
            clock += duration
            position = (x + delta[0], y + delta[1], z + delta[2])
            yaw += yaw_change
        self.segments = tuple(s for s in segments if s.duration_s > 0.0)
        self.duration_s = clock
        self.initial_yaw = math.radians(profile.initial_yaw_deg)
        self.final_position = position
        self.final_yaw = yaw

    def kinematics(self, t: Floats) -> tuple[Floats, Floats, Floats, Floats]:
        """Position, velocity, acceleration (n, 3) and yaw (n,) at `t` seconds since takeoff."""
        n = t.shape[0]
        position = np.zeros((n, 3))
        velocity = np.zeros((n, 3))
        acceleration = np.zeros((n, 3))
        yaw = np.full(n, self.initial_yaw)
        after = t >= self.duration_s
        position[after] = self.final_position
        yaw[after] = self.final_yaw
        for segment in self.segments:
            inside = (t >= segment.start_s) & (t < segment.end_s)
            if not inside.any():
                continue
            local = t[inside] - segment.start_s
            s, speed, accel = segment.along(local)
            direction = np.array(segment.direction)
            position[inside] = np.array(segment.origin) + s[:, None] * direction
            velocity[inside] = speed[:, None] * direction
            acceleration[inside] = accel[:, None] * direction
            yaw[inside] = segment.yaw(local)
        return position, velocity, acceleration, yaw


def tilt_for(acceleration: Floats, yaw: Floats) -> tuple[Floats, Floats]:
    """Roll and pitch that point the thrust along (a - g): a rotorcraft tilts to accelerate.

    Body frame x forward, y left, z up; Z-Y-X Euler angles, so positive pitch is nose down
    and positive roll is right side down.
    """
    force = acceleration + np.array([0.0, 0.0, G_MARS_MPS2])
    cos_yaw, sin_yaw = np.cos(yaw), np.sin(yaw)
    forward = cos_yaw * force[:, 0] + sin_yaw * force[:, 1]
    left = -sin_yaw * force[:, 0] + cos_yaw * force[:, 1]
    pitch = np.arctan2(forward, force[:, 2])
    roll = np.arctan2(-left, np.hypot(forward, force[:, 2]))
    return roll, pitch


def body_from_world(vectors: Floats, roll: Floats, pitch: Floats, yaw: Floats) -> Floats:
    """Rotate world-frame vectors (n, 3) into the body frame: R^T v with R = Rz Ry Rx."""
    cr, sr, cp, sp, cy, sy = (
        np.cos(roll),
        np.sin(roll),
        np.cos(pitch),
        np.sin(pitch),
        np.cos(yaw),
        np.sin(yaw),
    )
    x, y, z = vectors[:, 0], vectors[:, 1], vectors[:, 2]
    # Rows of R^T are the body axes expressed in the world frame.
    bx = cp * cy * x + cp * sy * y - sp * z
    by = (sr * sp * cy - cr * sy) * x + (sr * sp * sy + cr * cy) * y + sr * cp * z
    bz = (cr * sp * cy + sr * sy) * x + (cr * sp * sy - sr * cy) * y + cr * cp * z
    return np.stack([bx, by, bz], axis=1)


@dataclass(frozen=True, kw_only=True)
class Timeline:
    """When each phase starts, in seconds since the start of the profile."""

    preflight_s: float
    spinup_s: float
    takeoff_s: float
    touchdown_s: float
    spindown_end_s: float
    end_s: float

    def mode(self, t: Floats) -> NDArray[np.int64]:
        """HELI_HK mode at each time: IDLE, PREFLIGHT, SPINUP, FLIGHT, LANDED."""
        return np.searchsorted(
            np.array([self.preflight_s, self.spinup_s, self.takeoff_s, self.touchdown_s]),
            t,
            side="right",
        ).astype(np.int64)


@dataclass(frozen=True, kw_only=True)
class SlowState:
    """Battery and thermal state on the SLOW_STEP_S grid, to be interpolated."""

    time: Floats
    voltage: Floats
    current: Floats
    soc: Floats
    battery_temp: Floats
    avionics_temp: Floats
    heater_on: NDArray[np.bool_]


class Flight:
    """A profile flown once: kinematics, rotors, power and temperatures as functions of time."""

    def __init__(self, profile: FlightProfile, rng: np.random.Generator) -> None:
        self.profile = profile
        self.trajectory = Trajectory(profile)
        takeoff = profile.idle_s + profile.preflight_s + profile.spinup_s + profile.hold_at_speed_s
        touchdown = takeoff + self.trajectory.duration_s
        self.timeline = Timeline(
            preflight_s=profile.idle_s,
            spinup_s=profile.idle_s + profile.preflight_s,
            takeoff_s=takeoff,
            touchdown_s=touchdown,
            spindown_end_s=touchdown + profile.spindown_s,
            end_s=touchdown + profile.landed_s,
        )
        # Wind: slow attitude wobble in the air, different on every run of the same seed.
        self._wobble_phase = rng.uniform(0.0, 2.0 * math.pi, size=4)
        rover_xy = np.array([profile.rover_east_m]), np.array([profile.rover_north_m])
        self.rover_position = (
            profile.rover_east_m,
            profile.rover_north_m,
            float(ground_height_m(*rover_xy)[0]),
        )
        self.slow_state = self._integrate_slow_state()

    @property
    def duration_s(self) -> float:
        return self.timeline.end_s

    def rotor_rpm(self, t: Floats) -> Floats:
        """Rotor speed: spin-up before takeoff, constant in the air, spin-down after landing."""
        line = self.timeline
        up = smoothstep((t - line.spinup_s) / self.profile.spinup_s)
        down = 1.0 - smoothstep((t - line.touchdown_s) / self.profile.spindown_s)
        return np.asarray(ROTOR_RPM * np.where(t < line.touchdown_s, up, down), dtype=np.float64)

    def rotor_phase(self, t: Floats) -> Floats:
        """Rotor angle in revolutions at `t`, the integral of rpm / 60 (vibration phase)."""
        grid = np.arange(0.0, self.duration_s + 1.0, 0.001)
        revolutions = np.cumsum(self.rotor_rpm(grid)) * 0.001 / 60.0
        return np.asarray(np.interp(t, grid, revolutions), dtype=np.float64)

    def kinematics(self, t: Floats) -> Kinematics:
        """The helicopter's motion and attitude at `t` seconds since the start of the profile."""
        since_takeoff = t - self.timeline.takeoff_s
        position, velocity, acceleration, yaw = self.trajectory.kinematics(since_takeoff)
        roll, pitch = tilt_for(acceleration, yaw)
        airborne = np.clip(since_takeoff, 0.0, 1.0) * np.clip(
            self.timeline.touchdown_s - t, 0.0, 1.0
        )
        phase = self._wobble_phase
        roll = roll + airborne * (
            0.010 * np.sin(2 * math.pi * 0.31 * t + phase[0])
            + 0.004 * np.sin(2 * math.pi * 0.83 * t + phase[1])
        )
        pitch = pitch + airborne * (
            0.010 * np.sin(2 * math.pi * 0.27 * t + phase[2])
            + 0.004 * np.sin(2 * math.pi * 0.71 * t + phase[3])
        )
        return Kinematics(
            position=position,
            velocity=velocity,
            acceleration=acceleration,
            roll=roll,
            pitch=pitch,
            yaw=np.angle(np.exp(1j * yaw)),  # wrapped to (-pi, pi]
        )

    def power_w(self, t: Floats) -> Floats:
        """Electrical power drawn by the rotors and avionics (heater excluded)."""
        rpm_fraction = self.rotor_rpm(t) / ROTOR_RPM
        line = self.timeline
        in_air = (t >= line.takeoff_s) & (t < line.touchdown_s)
        _, velocity, _, _ = self.trajectory.kinematics(t - line.takeoff_s)
        climb_w = 1.8 * G_MARS_MPS2 * np.maximum(velocity[:, 2], 0.0) / 0.6
        rotor_w = np.where(
            in_air, HOVER_W + climb_w, HOVER_W * GROUND_SPIN_FRACTION * rpm_fraction**3
        )
        return np.asarray(AVIONICS_W + rotor_w, dtype=np.float64)

    def _integrate_slow_state(self) -> SlowState:
        """Battery charge and temperatures, stepped with a hysteresis heater (sequential)."""
        profile = self.profile
        time = np.arange(0.0, self.duration_s + SLOW_STEP_S, SLOW_STEP_S)
        load_w = self.power_w(time)
        rotor_w = load_w - AVIONICS_W
        n = time.shape[0]
        voltage, current, soc = np.empty(n), np.empty(n), np.empty(n)
        battery_temp, avionics_temp = np.empty(n), np.empty(n)
        heater = np.zeros(n, dtype=np.bool_)
        charge, t_battery, t_avionics = (
            profile.initial_soc,
            profile.battery_temp_c,
            profile.avionics_temp_c,
        )
        heating = t_battery < HEATER_ON_BELOW_C
        ambient = profile.ambient_temp_c
        for i in range(n):
            if t_battery < HEATER_ON_BELOW_C:
                heating = True
            elif t_battery > HEATER_OFF_ABOVE_C:
                heating = False
            power = load_w[i] + (HEATER_W if heating else 0.0)
            open_circuit = CELLS * (CELL_EMPTY_V + CELL_SPAN_V * charge)
            # V = OCV - I R and I = P / V give V^2 - OCV V + P R = 0; take the upper root.
            volts = 0.5 * (
                open_circuit + math.sqrt(open_circuit**2 - 4.0 * power * PACK_RESISTANCE_OHM)
            )
            amps = power / volts
            voltage[i], current[i], soc[i] = volts, amps, charge
            battery_temp[i], avionics_temp[i], heater[i] = t_battery, t_avionics, heating
            charge -= amps * SLOW_STEP_S / CAPACITY_C
            battery_heat = amps * amps * PACK_RESISTANCE_OHM + (HEATER_W if heating else 0.0)
            t_battery += (
                SLOW_STEP_S
                * (battery_heat - BATTERY_LOSS_W_PER_K * (t_battery - ambient))
                / BATTERY_HEAT_J_PER_K
            )
            avionics_heat = AVIONICS_W + MOTOR_DRIVE_HEAT_FRACTION * rotor_w[i]
            t_avionics += (
                SLOW_STEP_S
                * (avionics_heat - AVIONICS_LOSS_W_PER_K * (t_avionics - ambient))
                / AVIONICS_HEAT_J_PER_K
            )
        return SlowState(
            time=time,
            voltage=voltage,
            current=current,
            soc=soc,
            battery_temp=battery_temp,
            avionics_temp=avionics_temp,
            heater_on=heater,
        )

    def slow_at(self, t: Floats) -> SlowState:
        """Battery and thermal state at `t`: linear between grid points, heater as last set."""
        grid = self.slow_state
        index = np.clip(np.searchsorted(grid.time, t, side="right") - 1, 0, grid.time.shape[0] - 1)

        def at(values: Floats) -> Floats:
            return np.asarray(np.interp(t, grid.time, values), dtype=np.float64)

        return SlowState(
            time=t,
            voltage=at(grid.voltage),
            current=at(grid.current),
            soc=at(grid.soc),
            battery_temp=at(grid.battery_temp),
            avionics_temp=at(grid.avionics_temp),
            heater_on=grid.heater_on[index],
        )
