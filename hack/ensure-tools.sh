#!/usr/bin/env bash
# The system tools `make test` needs besides Python packages. Missing Debian packages are
# installed when apt-get is usable (root, or sudo without a password); otherwise this stops
# at once with one line naming the missing commands and the packages to install.
# Uses only bash builtins and the tools it looks for (its test runs it with a bare PATH).
set -euo pipefail

# command:Debian package
tools=(promtool:prometheus prometheus:prometheus shellcheck:shellcheck openssl:openssl)

missing_commands() {
  local entry
  for entry in "${tools[@]}"; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || printf '%s\n' "${entry}"
  done
}

mapfile -t missing < <(missing_commands)
if [ ${#missing[@]} -gt 0 ]; then
  commands=() packages=()
  for entry in "${missing[@]}"; do
    commands+=("${entry%%:*}")
    package=${entry#*:}
    case " ${packages[*]} " in *" ${package} "*) ;; *) packages+=("${package}") ;; esac
  done
  apt=()
  if command -v apt-get >/dev/null 2>&1; then
    if [ "${EUID}" -eq 0 ]; then
      apt=(apt-get)
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      apt=(sudo -n apt-get)
    fi
  fi
  if [ ${#apt[@]} -eq 0 ]; then
    echo "ensure-tools: ${commands[*]} not found and apt-get is not usable here (needs root or passwordless sudo): install the Debian package(s) ${packages[*]} (sudo apt-get install ${packages[*]})" >&2
    exit 1
  fi
  echo "ensure-tools: installing Debian package(s) ${packages[*]} for ${commands[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! "${apt[@]}" update -qq || ! "${apt[@]}" install -y -qq --no-install-recommends "${packages[@]}" >/dev/null; then
    echo "ensure-tools: apt-get could not install ${packages[*]}: install them yourself (sudo apt-get install ${packages[*]})" >&2
    exit 1
  fi
  mapfile -t still < <(missing_commands)
  if [ ${#still[@]} -gt 0 ]; then
    echo "ensure-tools: ${still[*]%%:*} still not found after installing ${packages[*]}" >&2
    exit 1
  fi
fi

# kubectl (it renders the kustomize base in the tests) has no current Debian package.
if ! command -v kubectl >/dev/null 2>&1; then
  echo "ensure-tools: kubectl not found: install it from https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/ (no current Debian package)" >&2
  exit 1
fi
