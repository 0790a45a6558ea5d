#!/usr/bin/env bash
# Install Debian's Chromium for the slow test that opens `robust report`'s HTML page in a real headless browser
# (tests/test_report.py::test_html_renders_in_headless_chromium); called by .ci/run. Never fails the build:
# where apt is unavailable (or we are not root) it says so and that test skips with the reason.
set -u
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    echo "browser_setup: chromium already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    echo "browser_setup: no apt-get or not root; the headless-browser test will be skipped"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if apt-get install -y -qq --no-install-recommends chromium >/tmp/browser_setup.log 2>&1 \
   || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >>/tmp/browser_setup.log 2>&1); then
    echo "browser_setup: installed $(chromium --version 2>/dev/null)"
else
    echo "browser_setup: apt-get install chromium failed (see /tmp/browser_setup.log); the headless-browser test will be skipped"
fi
exit 0
