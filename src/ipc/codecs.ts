// Body decompression for arrow-js (LZ4_FRAME and ZSTD, Arrow IPC format "compression"), with
// pure-JavaScript codecs. Decompressed buffers are new memory: compressed streams cannot be read
// in place. Sizes are checked before anything is allocated, so a hostile frame that claims
// gigabytes is refused instead of exhausting memory.
import { CompressionType } from 'apache-arrow/fb/compression-type';
import { compressionRegistry } from 'apache-arrow/ipc/compression/registry';
import { decompress as zstdDecompress } from 'fzstd';
// @ts-expect-error lz4js ships no type declarations
import lz4 from 'lz4js';
import { fail } from '../errors.js';

/** Largest decompressed buffer accepted (per buffer). */
export const MAX_DECOMPRESSED_BYTES = 2 ** 31 - 1;

/** arrow-js views decompressed bytes as typed arrays, which need their natural alignment. */
function aligned(bytes: Uint8Array): Uint8Array {
  return bytes.byteOffset % 8 === 0 ? bytes : bytes.slice();
}

function zstdContentSize(data: Uint8Array): number | null {
  if (data.length < 6 || data[0] !== 0x28 || data[1] !== 0xb5 || data[2] !== 0x2f || data[3] !== 0xfd) throw fail('ERR_IPC_INVALID', 'ZSTD buffer without a zstd frame magic');
  const fhd = data[4]!;
  const singleSegment = (fhd >> 5) & 1;
  const fcsSize = [singleSegment ? 1 : 0, 2, 4, 8][fhd >> 6]!;
  if (fcsSize === 0) return null;
  const at = 5 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][fhd & 3]!;
  if (at + fcsSize > data.length) throw fail('ERR_IPC_TRUNCATED', 'ZSTD frame header is truncated');
  let size = 0;
  for (let i = fcsSize - 1; i >= 0; i--) size = size * 256 + data[at + i]!;
  return fcsSize === 2 ? size + 256 : size;
}

compressionRegistry.set(CompressionType.LZ4_FRAME, {
  decode(data: Uint8Array): Uint8Array {
    const bound = lz4.decompressBound(data) as number;
    if (!(bound >= 0) || bound > MAX_DECOMPRESSED_BYTES) throw fail('ERR_TOO_LARGE', `LZ4 frame would decompress to ${bound} bytes`);
    return aligned(lz4.decompress(data, bound) as Uint8Array);
  },
});

compressionRegistry.set(CompressionType.ZSTD, {
  decode(data: Uint8Array): Uint8Array {
    const size = zstdContentSize(data);
    if (size !== null && size > MAX_DECOMPRESSED_BYTES) throw fail('ERR_TOO_LARGE', `ZSTD frame would decompress to ${size} bytes`);
    return aligned(zstdDecompress(data));
  },
});
