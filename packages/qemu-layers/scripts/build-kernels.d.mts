export declare const WAT_PATH: string;
export declare const OUT_PATH: string;
export declare const FEATURES: { simd: boolean; threads: boolean; bulk_memory: boolean };
export declare function buildKernels(): Promise<{ bytes: Uint8Array; base64: string; text: string }>;
