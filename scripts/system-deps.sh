#!/usr/bin/env bash
# System packages the tests need beyond Python: Debian's Chromium (the web page test), dicom3tools
# (dciodvfy checks the service's DICOM Segmentation) and a
# hosts entry that stops torch's process-group setup from reverse-resolving 127.0.0.1 over DNS.
# Installs only as root (CI); otherwise says what is missing.
set -u
as_root() { [ "$(id -u)" = 0 ]; }
if ! command -v chromium >/dev/null 2>&1; then
  if as_root && command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: installing Debian's chromium (headless browser for the web page test)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "system-deps: could not install chromium; the browser test will be skipped"
  else
    echo "system-deps: chromium not found; install Debian's 'chromium' to run the browser test"
  fi
fi
if ! command -v dciodvfy >/dev/null 2>&1; then
  if as_root && command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: installing Debian's dicom3tools (dciodvfy, the DICOM Segmentation test)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null) \
      || echo "system-deps: could not install dicom3tools; the dciodvfy test will be skipped"
  else
    echo "system-deps: dciodvfy not found; install Debian's 'dicom3tools' to run the DICOM Segmentation check"
  fi
fi
if ! grep -qE '^::ffff:127\.0\.0\.1[[:space:]]+localhost' /etc/hosts 2>/dev/null; then
  if as_root && [ -w /etc/hosts ]; then
    echo '::ffff:127.0.0.1 localhost' >> /etc/hosts
  else
    echo "system-deps: add '::ffff:127.0.0.1 localhost' to /etc/hosts to keep torch's reverse-DNS lookups local"
  fi
fi
exit 0
