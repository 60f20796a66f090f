#!/usr/bin/env bash
# Demo: build a RAFS image from a sample directory, inspect it, verify every
# chunk, unpack it back (tar) and show the two trees are equal. As root, also
# mount an uncompressed v6 build with the kernel's EROFS and serve the image
# with nydusd over FUSE, comparing both views with the source.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f dist/rafs/cli/nydus-image.js ] || npm run build
NI=./bin/nydus-image
work=$(mktemp -d /tmp/nydus-demo.XXXXXX)
trap 'mountpoint -q "$work/mnt" 2>/dev/null && umount "$work/mnt"; mountpoint -q "$work/fuse" 2>/dev/null && umount "$work/fuse"; for l in ${loops:-}; do losetup -d "$l" 2>/dev/null || true; done; rm -rf "$work"' EXIT
src=$work/src
mkdir -p "$src/etc" "$src/bin" "$src/data/nested/deeper" "$src/empty"
echo "hello from nydus" > "$src/etc/motd"
printf 'line %s\n' $(seq 1 20000) > "$src/data/lines.txt"
head -c 3145728 /dev/urandom > "$src/data/random.bin"
cp "$src/data/random.bin" "$src/data/random-copy.bin"          # deduplicated chunks
truncate -s 5M "$src/data/sparse.img"
ln "$src/etc/motd" "$src/etc/motd.hardlink"
ln -s ../etc/motd "$src/bin/motd-link"
ln -s /nonexistent "$src/bin/dangling"
echo nested > "$src/data/nested/deeper/file"
chmod 4755 "$src/bin/motd-link" 2>/dev/null || true
setfattr -n user.demo -v "an xattr" "$src/etc/motd" 2>/dev/null || true
touch -d '2020-01-02 03:04:05.123456789' "$src/data/lines.txt"

# directory sizes are filesystem-specific (EROFS sizes a dir by its entries), so they are left out
tree_listing() { (cd "$1" && find . -mindepth 1 \( -type d -printf '%p %y %m %U:%G - %T@\n' \) -o -printf '%p %y %m %U:%G %s %T@ %l\n' | sort) ; }
content_sums() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum) ; }

echo "== 1. build (RAFS v6, zstd, blake3)"
mkdir -p "$work/blobs"
$NI create --fs-version 6 --compressor zstd --bootstrap "$work/image.boot" --blob-dir "$work/blobs" "$src"
echo "== 2. inspect"
$NI inspect "$work/image.boot"
$NI inspect "$work/image.boot" -R stats
echo "== 3. check (verifies every chunk digest)"
$NI check "$work/image.boot" --blob-dir "$work/blobs" --verify-chunks -v | tail -n 8
echo "== 4. unpack to a tar and extract it"
$NI unpack "$work/image.boot" --blob-dir "$work/blobs" --output "$work/image.tar"
mkdir "$work/out"
tar --xattrs --xattrs-include='*' --numeric-owner -xpf "$work/image.tar" -C "$work/out"
echo "== 5. compare the source and the unpacked tree"
diff <(tree_listing "$src") <(tree_listing "$work/out")
diff <(content_sums "$src") <(content_sums "$work/out")
echo "trees are equal: $(tree_listing "$src" | wc -l) entries, identical metadata and contents"

if [ "$(id -u)" -eq 0 ] && grep -qw erofs /proc/filesystems && [ -e /dev/loop-control ]; then
  echo "== 6. kernel EROFS mount of an uncompressed v6 build"
  mkdir -p "$work/blobs-none" "$work/mnt"
  $NI create --fs-version 6 --compressor none --bootstrap "$work/none.boot" --blob-dir "$work/blobs-none" --output-json "$work/none.json" "$src" >/dev/null
  blob=$work/blobs-none/$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["blobs"][0])' "$work/none.json")
  lb=$(losetup -f --show -r "$work/none.boot" 2>/dev/null); ld=$(losetup -f --show -r "$blob" 2>/dev/null); loops="$lb $ld"
  mount -t erofs -o ro,device="$ld" "$lb" "$work/mnt"
  diff <(tree_listing "$src") <(tree_listing "$work/mnt")
  diff <(content_sums "$src") <(content_sums "$work/mnt")
  echo "kernel EROFS view equals the source"
  umount "$work/mnt"
else
  echo "(skipping kernel EROFS mount: needs root, EROFS and loop devices)"
fi

if [ "$(id -u)" -eq 0 ] && [ -e /dev/fuse ]; then
  echo "== 7. serve the zstd image with nydusd over FUSE and read it back"
  mkdir -p "$work/fuse" "$work/cache"
  ./bin/nydusd --mountpoint "$work/fuse" --bootstrap "$work/image.boot" --localfs-dir "$work/blobs" --log-level warn &
  pid=$!
  for _ in $(seq 1 100); do mountpoint -q "$work/fuse" && break; sleep 0.1; done
  diff <(tree_listing "$src") <(tree_listing "$work/fuse")
  diff <(content_sums "$src") <(content_sums "$work/fuse")
  echo "nydusd serves the image equal to the source"
  kill -TERM "$pid"; wait "$pid"
else
  echo "(skipping nydusd FUSE mount: needs root and /dev/fuse)"
fi
echo "demo OK"
