#!/usr/bin/env bash
# Install what the Cortex-M build of runtime_c needs, where it is missing: the cross compiler
# (gcc-arm-none-eabi), its C library (libnewlib-arm-none-eabi) and the emulator (qemu-system-arm),
# from the distribution's packages with apt-get (as root, as CI runs).  Without root or apt-get, or
# when the installation fails, it says what to install and lets the rest of the setup go on: the
# Cortex-M tests in tests/test_runtime_c.py then fail with the same advice (they never skip).
set -euo pipefail
PACKAGES="gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
have() {
    command -v arm-none-eabi-gcc >/dev/null 2>&1 && command -v qemu-system-arm >/dev/null 2>&1 &&
        echo 'int main(void){return 0;}' | arm-none-eabi-gcc --specs=rdimon.specs -x c - -o /dev/null >/dev/null 2>&1
}
have && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: the Cortex-M emulator test needs: $PACKAGES (install them as root: apt-get install $PACKAGES)" >&2
    exit 0
fi
echo "installing $PACKAGES (a few minutes)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null; }; then
    echo "error: apt-get could not install $PACKAGES: the Cortex-M emulator tests will fail" >&2
    exit 0
fi
have || echo "error: $PACKAGES installed, but arm-none-eabi-gcc cannot link with newlib: the Cortex-M tests will fail" >&2
