{
  description = "ociboot: netboot a Raspberry Pi cluster from OCI images";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in {
      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          # gok itself is pinned in go.mod and runs as `go tool gok`.
          packages = with pkgs; [
            go
            gnumake
            e2fsprogs
            # SD-card images: sfdisk, mkfs.vfat, mcopy, xz
            util-linux
            dosfstools
            mtools
            xz
            # node images: make node-image (mmdebstrap; arm64 maintainer
            # scripts run through qemu-user's binfmt handler, which the host
            # registers), SSH logins into booted nodes
            mmdebstrap
            openssh
            libcap
            squashfsTools
            iproute2
            qemu
            # peers the tests talk to
            busybox
            dhcpcd
            dnsmasq
            tftp-hpa
            atftp
            curl
            libnfs
            nfs-ganesha
            skopeo
            umoci
            distribution
          ];
        };
      });
    };
}
