#!/usr/bin/env bash
# Issue 21's check of the predictions (run it alone: 2 busy cores move every figure): calibrate this
# machine for the tiny pool at both core shares, then two runs calibration never saw, each started
# from the calibrated profile (a run adds what it saw). Each run prints its predicted / measured
# table per stage and step kind; summary.json keeps it. About 12 min on 2 quiet cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/prediction_check}
export SYMOE_PROFILES=$out/profiles
rm -rf "$out" && mkdir -p "$out"
S=.venv/bin/symoe
$S calibrate --config tiny --devices 2 --log-dir "$out/cal2"   # one core per engine: the 2-device run's curves
$S calibrate --config tiny --log-dir "$out/cal1"               # both cores: the 1-device run's
$S calibrate --show
cp -r "$SYMOE_PROFILES" "$out/calibrated"
$S run --limit 6 --devices 2 --max-tokens 48 --store "$out/six.sqlite" --out "$out/six"
rm -rf "$SYMOE_PROFILES" && cp -r "$out/calibrated" "$SYMOE_PROFILES"
$S run --limit 12 --seed 7 --store "$out/twelve.sqlite" --out "$out/twelve"
