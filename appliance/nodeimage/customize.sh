#!/bin/sh
# mmdebstrap customize hook: runs on the build machine with $1 = the new
# node root, after every package is installed. It makes the root a
# netbooting node's: root on NFS, the network left as the initramfs set it
# up, no per-machine secrets. (nodeimage.Sanitize enforces the last part
# for every image, built or imported.)
set -eu
root=$1
here=$(dirname "$0")

# The initramfs mounts / over NFS; there is no SD card to mount.
cat >"$root/etc/fstab" <<'END'
# The root file system is mounted over NFS by the initramfs (ociboot);
# add local disks here by label or UUID if a node has any.
END

# raspi-firmware writes config.txt and cmdline.txt into /boot/firmware
# from this file; ociboot replaces root=, ip= and friends in cmdline.txt
# for each node and appends Netboot.ConfigTxt after an [all] line.
sed -i \
	-e 's|^#\?CONSOLES=.*|CONSOLES="serial0,115200 tty1"|' \
	-e 's|^#\?ROOTPART=.*|ROOTPART=/dev/nfs|' \
	"$root/etc/default/raspi-firmware"
# Per-model sections as on a Raspberry Pi OS card (raspi-firmware appends
# this file to the config.txt it writes). ociboot appends
# Netboot.ConfigTxt after an [all] line of its own.
cat >"$root/etc/default/raspi-firmware-custom" <<'END'
[pi4]
# Pi 4, CM4, Pi 400
arm_boost=1
[cm4]
# the CM4's USB 2.0 port as a host (IO boards, the Super6C's slot 1 hub)
otg_mode=1
[pi5]
# Pi 5, CM5
dtparam=pciex1
[all]
END

# raspi-firmware regenerates config.txt on every kernel install and
# initramfs update; this hook runs after it each time and
#  - names followkernel on the initramfs line, as a Pi SD card does;
#  - gives a CM4's firmware the bcm2711-rpi-cm4.dtb it loads (Debian's
#    kernel calls the CM4's device tree bcm2711-rpi-cm4-io.dtb).
cat >"$root/etc/kernel/postinst.d/z51-ociboot" <<'END'
#!/bin/sh
# ociboot: after raspi-firmware's z50 hook; see /etc/default/raspi-firmware-custom.
f=/boot/firmware
sed -i 's/^initramfs \([^ ]*\)$/initramfs \1 followkernel/' $f/config.txt
if [ -f $f/bcm2711-rpi-cm4-io.dtb ]; then
	cp $f/bcm2711-rpi-cm4-io.dtb $f/bcm2711-rpi-cm4.dtb
fi
exit 0
END
chmod 0755 "$root/etc/kernel/postinst.d/z51-ociboot"
mkdir -p "$root/etc/initramfs/post-update.d"
ln -sf ../../kernel/postinst.d/z51-ociboot "$root/etc/initramfs/post-update.d/z51-ociboot"
kver=$(basename "$(ls -d "$root"/lib/modules/* | sort -V | tail -n 1)")

# The initramfs holds what mounts an NFS root and no more: the Ethernet
# drivers of the boards ociboot boots, virtio for virtual machines, and the
# NFS client. (initramfs-tools' "most" or "netboot" sets take every network
# and storage driver: a bigger file to fetch over TFTP, and a build that
# runs for many minutes under qemu-user.) A node that needs another driver
# lists it in /etc/initramfs-tools/modules and runs update-initramfs -u.
mkdir -p "$root/etc/initramfs-tools/conf.d"
echo MODULES=list >"$root/etc/initramfs-tools/conf.d/ociboot-netboot.conf"
cat >>"$root/etc/initramfs-tools/modules" <<'END'
# ociboot: what a netbooting node loads before its root is mounted.
# Raspberry Pi 4, CM4, Pi 400 Ethernet (GENET) and its PHY
genet
broadcom
mdio-bcm-unimac
# Raspberry Pi 5, CM5 Ethernet (Cadence GEM)
macb
# Raspberry Pi 3 B and B+ USB Ethernet
smsc95xx
lan78xx
# virtual machines
virtio_net
virtio_mmio
virtio_blk
# the NFS client
nfs
nfsv3
# a root on the node's own disk after ociboot-install: eMMC and SD (Pi 4,
# CM4: sdhci-iproc; Pi 5, CM5: sdhci-brcmstb), NVMe, ext4
mmc_block
sdhci-iproc
sdhci-brcmstb
nvme
ext4
END

# The build held update-initramfs back (see the essential hook); make the
# initramfs once now. Its post-update hook (raspi-firmware's) copies it to
# /boot/firmware.
rm -f "$root/usr/sbin/update-initramfs"
chroot "$root" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
chroot "$root" update-initramfs -c -k "$kver"
chroot "$root" /etc/kernel/postinst.d/z50-raspi-firmware "$kver"
chroot "$root" /etc/kernel/postinst.d/z51-ociboot "$kver"

# The network carries the root file system. The initramfs configured the
# interface (ip=dhcp); systemd-networkd adopts that configuration without
# ever dropping it (KeepConfiguration), renews the lease with the same
# client identity (the MAC, as the bootloader and the kernel used), and
# systemd-resolved takes DNS from it. Nothing else manages interfaces.
mkdir -p "$root/etc/systemd/network"
cat >"$root/etc/systemd/network/10-ociboot-netboot.network" <<'END'
[Match]
Type=ether
Kind=!*

[Network]
DHCP=ipv4
KeepConfiguration=yes

[DHCPv4]
ClientIdentifier=mac
END
chroot "$root" systemctl enable systemd-networkd.service systemd-resolved.service
ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"

# The node's disk for container runtimes (ociboot.disk=) and install to
# its own disk (ociboot.install=); both do nothing without their kernel
# argument. Runtimes that keep state on the disk wait for it.
install -m 0755 "$here/node/ociboot-disk" "$here/node/ociboot-install" "$here/node/ociboot-nbd" "$root/usr/local/sbin/"
install -m 0644 "$here/node/ociboot-disk.service" "$here/node/ociboot-install.service" "$here/node/ociboot-nbd.service" "$root/etc/systemd/system/"
for unit in containerd docker k3s k3s-agent kubelet; do
	mkdir -p "$root/etc/systemd/system/$unit.service.d"
	install -m 0644 "$here/node/ociboot-disk-required.conf" "$root/etc/systemd/system/$unit.service.d/ociboot-disk.conf"
done
chroot "$root" systemctl enable ociboot-nbd.service ociboot-disk.service ociboot-install.service

# SSH host keys are per machine: ociboot writes each node its own when it
# makes the node's root. Outside ociboot, this unit makes them at boot.
rm -f "$root"/etc/ssh/ssh_host_*
cat >"$root/etc/systemd/system/ssh-hostkeys.service" <<'END'
[Unit]
Description=Make SSH host keys if this machine has none
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
RequiredBy=ssh.service
END
chroot "$root" systemctl enable ssh-hostkeys.service

# Per-machine state that must not be shared by every node of the image.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
ln -s /etc/machine-id "$root/var/lib/dbus/machine-id"
echo debian >"$root/etc/hostname"
rm -f "$root"/var/log/*.log "$root"/var/log/apt/* "$root/var/cache/ldconfig/aux-cache"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
