#!/usr/bin/env bash
# Installs the Debian packages the tests run against (their peers: dnsmasq,
# skopeo, QEMU, nfs-ganesha, ...), Debian's arm64 kernel for the Pi test,
# and the binfmt handler for arm64 root file systems. `make deps` runs it,
# and `make test` runs it first. Idempotent: when everything is present it
# says so and returns at once. Without root it prints what is missing and
# returns 0, so that the tests that can run still do (the others skip, or
# fail with OCIBOOT_REQUIRE_ALL=1).
#
# It never starts a daemon (policy-rc.d answers 101 while it installs) and
# never stops one: the tests start their own peers inside network
# namespaces, and daemons this machine runs are not ours to touch.
set -euo pipefail

packages=(
	iproute2 squashfs-tools busybox udhcpc isc-dhcp-client dnsmasq
	tftp-hpa atftp curl libnfs-utils skopeo umoci docker-registry
	qemu-system-x86 qemu-system-arm ipxe-qemu linux-image-amd64 cpio kea-admin chromium
	nfs-ganesha nfs-ganesha-vfs rpcbind nfs-common libnfs-dev gcc libc6-dev kmod
	make e2fsprogs
	# NBD: libnbd's tools and Python bindings (nbdinfo, nbdcopy, nbdsh),
	# nbd-client, and Debian's nbd-server and fio for the benchmark
	libnbd-bin python3-libnbd nbd-client nbd-server fio
	# node images: an arm64 Debian root built with mmdebstrap through
	# qemu-user, and the disk image tools around it
	mmdebstrap qemu-user-static binfmt-support arch-test openssh-client
	dosfstools mtools fdisk xz-utils libcap2-bin tar
	# the node image's install step, run on this machine against loop devices
	rsync util-linux
)
# The Pi test boots Debian's arm64 kernel as a Pi's kernel8.img in
# qemu-system-aarch64; its package and busybox-static:arm64 are unpacked
# here (dpkg -x), never installed. OCIBOOT_ARM64_ROOT moves it.
arm64=${OCIBOOT_ARM64_ROOT:-/opt/ociboot-arm64}

# missing_packages lists the packages dpkg does not have installed (one
# dpkg-query for all of them: this runs before every `make test`).
missing_packages() {
	local installed
	installed=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${packages[@]}" 2>/dev/null | awk '$2 == "ii" {print $1}' || true)
	local p
	for p in "${packages[@]}"; do
		grep -qx "$p" <<<"$installed" || echo "$p"
	done
}

have_arm64() { [ -x "$arm64/bin/busybox" ] && ls "$arm64"/lib/modules/*/modules.dep >/dev/null 2>&1; }

binfmt_mounted() { grep -qs ' /proc/sys/fs/binfmt_misc binfmt_misc ' /proc/mounts; }

binfmt_enabled() { [ "$(head -n 1 /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null)" = enabled ]; }

mapfile -t missing < <(missing_packages)
todo=()
[ ${#missing[@]} -eq 0 ] || todo+=("packages: ${missing[*]}")
have_arm64 || todo+=("arm64 kernel and busybox under $arm64")
binfmt_mounted || todo+=("binfmt_misc mounted on /proc/sys/fs/binfmt_misc")
binfmt_enabled || todo+=("binfmt handler qemu-aarch64 enabled")

if [ ${#todo[@]} -eq 0 ]; then
	echo "test dependencies: all present"
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "test dependencies missing (run \`make deps\` as root to install them):" >&2
	printf '  %s\n' "${todo[@]}" >&2
	echo "continuing: tests that need them skip (or fail with OCIBOOT_REQUIRE_ALL=1)" >&2
	exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Another apt run (of another checkout's tests) may hold the lock for a
# few minutes: wait for it instead of failing.
apt=(apt-get -o DPkg::Lock::Timeout=600 -y -qq)

if [ ${#missing[@]} -gt 0 ] || ! have_arm64; then
	# Packages such as dnsmasq and tftpd-hpa start their daemons on
	# install unless policy-rc.d says no; keep a policy the machine has.
	policy=/usr/sbin/policy-rc.d
	saved=
	if [ -e "$policy" ]; then
		saved=$(mktemp "$policy.ociboot.XXXXXX")
		cp -p "$policy" "$saved"
	fi
	restore() {
		if [ -n "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi
	}
	trap restore EXIT
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod +x "$policy"

	dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
	"${apt[@]}" update
	if [ ${#missing[@]} -gt 0 ]; then
		echo "installing: ${missing[*]}"
		"${apt[@]}" install --no-install-recommends "${missing[@]}" >/dev/null
	fi
	if ! have_arm64; then
		kpkg=$(apt-cache depends linux-image-arm64:arm64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
		dl=$(mktemp -d)
		(cd "$dl" && apt-get download -qq "${kpkg%%:*}:arm64" busybox-static:arm64)
		mkdir -p "$arm64"
		for deb in "$dl"/*.deb; do dpkg -x "$deb" "$arm64"; done
		rm -rf "$dl"
		depmod -b "$arm64" "$(basename "$(ls -d "$arm64"/lib/modules/*)")"
		echo "arm64 kernel and busybox unpacked under $arm64"
	fi
fi

binfmt_mounted || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
binfmt_enabled || update-binfmts --enable qemu-aarch64
binfmt_enabled || { echo "install-deps: qemu-aarch64 binfmt handler still not enabled (is qemu-user-static installed?)" >&2; exit 1; }
echo "test dependencies: installed"
