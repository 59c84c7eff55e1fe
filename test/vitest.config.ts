import { defineProject } from 'vitest/config';
import { sharedProject } from '../vitest.shared.js';

// Repository-level tests: packing, workspace hygiene, the README's commands.
export default defineProject(sharedProject('repo'));
