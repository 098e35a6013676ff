package nfsd

// InitScript is /sbin/init of the test image. It runs from the NFS root
// (busybox ash), prints "NFSTEST ok <check>" or "NFSTEST bad <check>: why"
// per check, then the restart handshake, then PASS or FAIL and powers off.
// nfstest_wait=<seconds> on the kernel command line bounds the wait for the
// host's restart.
const InitScript = `#!/bin/sh
export PATH=/bin:/sbin
umask 022
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sys /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs run /run
wait_limit=120
for arg in $(cat /proc/cmdline); do
  case "$arg" in nfstest_wait=*) wait_limit="${arg#nfstest_wait=}";; esac
done

fails=
say() { echo "NFSTEST $*"; }
ok() { say "ok $1"; }
bad() { say "bad $1: $2"; fails="$fails $1"; }
# eq CHECK WANT GOT
eq() { if [ "$3" = "$2" ]; then ok "$1"; else bad "$1" "want [$2] got [$3]"; fi; }
# run CHECK CMD...: CMD must succeed
run() { c=$1; shift; if out=$("$@" 2>&1); then ok "$c"; else bad "$c" "$* failed: $out"; fi; }
# mustfail CHECK CMD...: CMD must fail
mustfail() { c=$1; shift; if out=$("$@" 2>&1); then bad "$c" "$* succeeded"; else ok "$c"; fi; }
# Forget cached attributes, names and pages: later reads ask the server.
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
exists() { if [ -e "$1" ] || [ -L "$1" ]; then echo present; else echo missing; fi; }

say "start $(awk '$2=="/"{print $1, $3, $4}' /proc/mounts | tail -n 1)"
cd /t || bad cd "no /t"

# --- setuid, setgid, sticky --------------------------------------------
eq mode-image-suid 4755 "$(stat -c %a suid)"
eq mode-image-sgid 2755 "$(stat -c %a sgid)"
eq mode-image-both 6711 "$(stat -c %a both)"
eq mode-image-sticky-dir 1777 "$(stat -c %a sticky)"
eq mode-image-sgid-dir 2775 "$(stat -c %a sgiddir)"
eq mode-image-640 640 "$(stat -c %a m640)"
eq mode-image-000 0 "$(stat -c %a m000)"
eq mode-image-tmp 1777 "$(stat -c %a /tmp)"
eq mode-read-000-as-root "m000" "$(cat m000)"
: > newmode
eq mode-created 644 "$(stat -c %a newmode)"
chmod 4755 newmode; drop; eq mode-chmod-4755 4755 "$(stat -c %a newmode)"
chmod 2711 newmode; drop; eq mode-chmod-2711 2711 "$(stat -c %a newmode)"
chmod 6755 newmode; drop; eq mode-chmod-6755 6755 "$(stat -c %a newmode)"
mkdir newsticky; chmod 1777 newsticky; drop; eq mode-chmod-sticky-dir 1777 "$(stat -c %a newsticky)"
chmod 4711 chmodme; drop; eq mode-chmod-image-file 4711 "$(stat -c %a chmodme)"
eq mode-chmod-image-file-content "chmod me" "$(cat chmodme)"
mkdir -m 0700 priv; drop; eq mode-mkdir-700 700 "$(stat -c %a priv)"
run mode-exec-suid-copy sh -c 'cp /bin/busybox /t/priv/true && chmod 4755 /t/priv/true && /t/priv/true'

# --- owners --------------------------------------------------------------
eq owner-image-file 1000:1000 "$(stat -c %u:%g owned)"
eq owner-image-dir 1000:1000 "$(stat -c %u:%g ownedir)"
eq owner-image-root 0:0 "$(stat -c %u:%g chownme)"
echo root > rootmade
eq owner-created 0:0 "$(stat -c %u:%g rootmade)"
chown 1234:5678 rootmade; drop; eq owner-chown 1234:5678 "$(stat -c %u:%g rootmade)"
chown 4321:8765 chownme; drop; eq owner-chown-image-file 4321:8765 "$(stat -c %u:%g chownme)"
eq owner-chown-image-file-content "chown me" "$(cat chownme)"
mkdir ownedir/sub 2>/dev/null; eq owner-mkdir-in-foreign-dir 0:0 "$(stat -c %u:%g ownedir/sub)"
: > sgiddir/new; drop; eq owner-sgid-dir-inherits-group 0:1000 "$(stat -c %u:%g sgiddir/new)"
mkdir sgiddir/sub; drop; eq mode-sgid-dir-inherits-bit 2755 "$(stat -c %a sgiddir/sub)"
eq owner-sgid-dir-image-file "in sgid dir" "$(cat sgiddir/in)"

# --- hard links ----------------------------------------------------------
eq hardlink-image-same-inode "$(stat -c %i hl1)" "$(stat -c %i hl2)"
eq hardlink-image-nlink "2 2" "$(stat -c %h hl1) $(stat -c %h hl2)"
echo more >> hl1; drop
eq hardlink-write-visible "$(printf 'hardlinked\nmore')" "$(cat hl2)"
eq hardlink-same-inode-after-write "$(stat -c %i hl1)" "$(stat -c %i hl2)"
ln hl2 hl3; drop
eq hardlink-ln-nlink "3 3 3" "$(stat -c %h hl1) $(stat -c %h hl2) $(stat -c %h hl3)"
eq hardlink-ln-same-inode "$(stat -c %i hl1)" "$(stat -c %i hl3)"
echo third >> hl3; drop
eq hardlink-write-new-link "$(printf 'hardlinked\nmore\nthird')" "$(cat hl1)"
rm hl3; drop
eq hardlink-rm-nlink "2 2" "$(stat -c %h hl1) $(stat -c %h hl2)"
echo x > lnsrc; ln lnsrc lndst; echo y >> lndst; drop
eq hardlink-new-file "$(printf 'x\ny')" "$(cat lnsrc)"
eq hardlink-new-file-nlink 2 "$(stat -c %h lnsrc)"

# --- renames -------------------------------------------------------------
echo a > d1/a; mv d1/a d1/b; drop
eq rename-within-dir "missing a" "$(exists d1/a) $(cat d1/b)"
mv d1/b d2/c; drop
eq rename-across-dirs "missing a" "$(exists d1/b) $(cat d2/c)"
echo new > d1/y; ino=$(stat -c %i d1/y); mv d1/y d2/over; drop
eq rename-over-existing "new" "$(cat d2/over)"
eq rename-over-existing-source-gone missing "$(exists d1/y)"
eq rename-keeps-inode "$ino" "$(stat -c %i d2/over)"
mv renameme d2/renamed; drop
eq rename-image-file "renamed image file" "$(cat d2/renamed)"
eq rename-image-file-gone missing "$(exists renameme)"
mkdir d1/sub; echo s > d1/sub/f; mv d1/sub d2/sub; drop
eq rename-dir-across "s" "$(cat d2/sub/f)"
echo 1 > ra; echo 2 > rb; mv ra rb; drop
eq rename-over-same-dir "1" "$(cat rb)"

# --- a large file --------------------------------------------------------
dd if=/dev/urandom of=/run/big bs=1M count=64 2>/dev/null
want=$(md5sum < /run/big); want=${want%% *}
cp /run/big /big.bin
sync
echo 3 > /proc/sys/vm/drop_caches
got=$(md5sum < /big.bin); got=${got%% *}
eq bigfile-md5 "$want" "$got"
eq bigfile-size 67108864 "$(stat -c %s /big.bin)"
say "bigmd5 $want"
rm /run/big
dd if=/dev/zero of=sparse bs=1 count=1 seek=100000000 2>/dev/null; drop
eq sparse-size 100000001 "$(stat -c %s sparse)"

# --- symlinks ------------------------------------------------------------
eq symlink-image-dangling no/such/target "$(readlink sym)"
eq symlink-image-abs /etc/image-id "$(readlink symabs)"
eq symlink-image-follow nfstest "$(cat symabs)"
eq symlink-image-dir nfstest "$(cat symdir/image-id)"
eq symlink-type "symbolic link" "$(stat -c %F sym)"
ln -s ../../etc/image-id d1/newsym; drop
eq symlink-created ../../etc/image-id "$(readlink d1/newsym)"
eq symlink-created-follow nfstest "$(cat d1/newsym)"
long=$(head -c 1000 /dev/zero | tr '\0' a)
ln -s "$long" longsym; drop
eq symlink-long-target "$long" "$(readlink longsym)"

# --- directories ---------------------------------------------------------
mkdir -p mk/a/b; drop
run mkdir-nested test -d mk/a/b
run rmdir-nested rmdir mk/a/b mk/a mk
eq rmdir-gone missing "$(exists mk)"
mustfail rmdir-nonempty rmdir d2
run rmdir-image-dir rmdir emptydir
eq readdir-image-dir 300 "$(ls many | wc -l)"
mkdir gen; i=0; while [ $i -lt 400 ]; do i=$((i+1)); : > gen/f$i; done; drop
eq readdir-created 400 "$(ls gen | wc -l)"
run rm-recursive rm -r gen
name=$(head -c 255 /dev/zero | tr '\0' n)
echo long > "$name"; drop
eq long-name long "$(cat "$name")"
mustfail name-too-long sh -c ": > ${name}x"

# --- device nodes --------------------------------------------------------
eq fifo-image "fifo" "$(stat -c %F imgfifo)"
eq chardev-image "character special file 1,3" "$(stat -c '%F %t,%T' imgnull)"
mknod fifo p; drop
eq fifo-created "fifo" "$(stat -c %F fifo)"
(echo through > fifo) &
eq fifo-carries-data through "$(cat fifo)"
mknod null c 1 3; drop
eq chardev-created "character special file 1,3" "$(stat -c '%F %t,%T' null)"
echo discarded > null
eq chardev-works "" "$(cat null)"

# --- writes to files of the image ---------------------------------------
echo appended >> edit; drop
eq image-append "$(printf 'original image content\nappended')" "$(cat edit)"
printf XX | dd of=patch bs=1 seek=3 conv=notrunc 2>/dev/null; drop
eq image-patch abcXXfgh "$(cat patch)"
truncate -s 5 trunc; drop
eq image-truncate "5 01234" "$(stat -c %s trunc) $(cat trunc)"
touch -t 202001021234.56 touchme; drop
eq image-touch 1577968496 "$(stat -c %Y touchme)"
rm deleteme; drop
eq image-rm missing "$(exists deleteme)"

# --- the server restarts -------------------------------------------------
mkdir r; echo before > r/keep; sync
exec 3< keepimg
exec 4>> appendimg
exec 5< r/keep
# Data written but neither closed nor synced: the client commits it after
# the restart (and must send it again if the server's write verifier changed).
dd if=/dev/urandom of=/run/pending bs=64k count=16 2>/dev/null
pending=$(md5sum < /run/pending); pending=${pending%% *}
exec 6> r/pending
cat /run/pending >&6
cd r
say RESTART-NOW
read start _ < /proc/uptime; start=${start%.*}; i=0; restarted=; longest=0
while :; do
  i=$((i+1)); read t0 _ < /proc/uptime; t0=${t0%.*}
  echo "loop $i" > loop$i
  got=$(cat loop$i)
  [ "$got" = "loop $i" ] || bad restart-loop "loop$i holds [$got]"
  read t1 _ < /proc/uptime; t1=${t1%.*}
  [ $((t1 - t0)) -gt $longest ] && longest=$((t1 - t0))
  if read -t 1 line; then
    case "$line" in *` + RestartedInput + `*) restarted=1; break;; esac
  fi
  [ $((t1 - start)) -gt "$wait_limit" ] && break
done
[ -n "$restarted" ] && ok restart-signal || bad restart-signal "no ` + RestartedInput + ` from the host within ${wait_limit}s"
say "restart-loops $i, the longest took ${longest}s"
drop
eq restart-old-fd-image-file "kept image file" "$(cat <&3)"
eq restart-old-fd-new-file before "$(cat <&5)"
exec 6>&-; drop
got=$(md5sum < /t/r/pending); eq restart-uncommitted-write "$pending" "${got%% *}"
echo after >&4; drop
eq restart-old-fd-append "$(printf 'line1\nafter')" "$(cat /t/appendimg)"
echo "new after restart" > afterfile; drop
eq restart-cwd-create "new after restart" "$(cat /t/r/afterfile)"
eq restart-cwd-readdir "$i" "$(ls . | grep -c '^loop')"
eq restart-loop-file "loop 1" "$(cat loop1)"
echo x > /t/after-root; drop
eq restart-new-file x "$(cat /t/after-root)"
eq restart-old-tree "$(printf 'hardlinked\nmore\nthird')" "$(cat /t/hl2)"
exec 3<&- 4>&- 5<&-
cd /

sync
if [ -z "$fails" ]; then say PASS; else say "FAIL$fails"; fi
sleep 1
poweroff -f
`
